//! One deterministic tar writer for every layer kiln creates.
//!
//! The format follows what Docker and BuildKit write (Go's archive/tar):
//! USTAR headers, a PAX extended header before an entry only when a value
//! does not fit (long names, xattrs as `SCHILY.xattr.<name>`, large sizes or
//! ids), numeric owners with empty user and group names, directories with a
//! trailing `/`, whiteouts as empty `.wh.<name>` files and opaque directories
//! as the directory followed by `<dir>/.wh..wh..opq`. Sockets are skipped.
//! Only whole seconds of mtimes are written, so equal input gives equal
//! bytes. The archive ends with two zero blocks, as Go's writer does.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};

use kiln_protocol::{EntryKind, LayerEntry};

use crate::oci::layer::{Compression, Layer, LayerWriter};
use crate::oci::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, Default)]
pub struct LayerOptions {
    pub compression: Compression,
    /// SOURCE_DATE_EPOCH: mtimes later than this are clamped to it.
    pub source_date_epoch: Option<i64>,
}

/// Where the bytes of regular files come from. `open` is called once per
/// file entry without `link`, in the order the entries are written (sorted
/// by path).
///
/// When hardlinked entries are reordered by sorting (a link sorts before the
/// entry holding the content), the content is still asked for with the
/// entry that had `link: None`, at the position of the first path of the
/// group, which the tar then holds as the regular file.
pub trait ContentSource {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>>;
}

#[derive(Debug, thiserror::Error)]
pub enum LayerTarError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the layer entry {path}: {source}")]
    Entry { path: String, source: io::Error },
    #[error("{path}: the manifest says {expected} bytes, the content has {actual}")]
    SizeMismatch { path: String, expected: u64, actual: u64 },
}

fn entry_err(path: &str, message: impl Into<String>) -> LayerTarError {
    LayerTarError::Entry { path: path.to_string(), source: io::Error::new(io::ErrorKind::InvalidInput, message.into()) }
}

/// Orders paths component by component in byte order, so a directory comes
/// right before its children (`a`, `a/b`, `a.b`; plain byte order would put
/// `a.b` between `a` and `a/b`).
pub fn path_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Sorts entries the way [`write_layer`] writes them.
pub fn sort_entries(entries: &mut [LayerEntry]) {
    entries.sort_by(|a, b| path_order(&a.path, &b.path));
}

/// Checks that a layer path is relative and normalised: no leading `/`, no
/// empty, `.` or `..` components.
fn check_path(path: &str) -> Result<(), LayerTarError> {
    if path.starts_with('/') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") || path.contains('\0') {
        return Err(entry_err(path, "a layer path must be relative and normalised (no leading /, no empty, . or .. components)"));
    }
    Ok(())
}

/// Writes `entries` (sorted here: parents before children, byte order) as
/// an OCI layer into `store`. Returns `None` when `entries` is empty: an
/// empty diff adds no layer. An entry for the root directory itself (empty
/// path) is not written, as in Docker's layers.
pub fn write_layer(
    store: &Store,
    entries: &mut Vec<LayerEntry>,
    contents: &mut dyn ContentSource,
    opts: &LayerOptions,
) -> Result<Option<Layer>, LayerTarError> {
    entries.retain(|e| !e.path.is_empty());
    if entries.is_empty() {
        return Ok(None);
    }
    let writer = LayerWriter::new(store.blob_writer()?, opts.compression)?;
    let writer = write_entries(entries, contents, opts, BufWriter::with_capacity(1 << 18, writer))?;
    let writer = writer
        .into_inner()
        .map_err(|e| LayerTarError::Entry { path: "(end of archive)".into(), source: e.into_error() })?;
    Ok(Some(writer.finish()?))
}

/// Writes `entries` as a plain tar to `out` (cache volumes kept on the
/// host), by the same rules as [`write_layer`]; no entries give an empty archive.
pub fn write_tar(
    entries: &mut Vec<LayerEntry>,
    contents: &mut dyn ContentSource,
    opts: &LayerOptions,
    out: &mut dyn Write,
) -> Result<(), LayerTarError> {
    entries.retain(|e| !e.path.is_empty());
    let out = write_entries(entries, contents, opts, out)?;
    out.flush().map_err(|source| LayerTarError::Entry { path: "(end of archive)".into(), source })
}

/// Checks, sorts and writes `entries`, then the end-of-archive blocks.
fn write_entries<W: Write>(
    entries: &mut [LayerEntry],
    contents: &mut dyn ContentSource,
    opts: &LayerOptions,
    out: W,
) -> Result<W, LayerTarError> {
    for e in entries.iter() {
        check_path(&e.path)?;
    }
    sort_entries(entries);
    if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(entry_err(&w[0].path, "the path is listed twice"));
    }
    let plan = plan_hardlinks(entries)?;
    let mut tar = TarWriter::new(out, opts.source_date_epoch);
    for (i, e) in entries.iter().enumerate() {
        let result = match &plan[i] {
            Role::Plain => tar.entry(e, None, contents),
            Role::Holder { content } => tar.entry(e, Some(&entries[*content]), contents),
            Role::LinkTo { holder } => tar.hardlink(e, &entries[*holder].path),
        };
        result?;
    }
    tar.finish().map_err(|source| LayerTarError::Entry { path: "(end of archive)".into(), source })
}

/// How a sorted entry is written.
enum Role {
    /// Written as described (files with `link: None` read their content).
    Plain,
    /// The first path of a hardlink group: a regular file whose content is
    /// read through the group's content entry (index into the sorted list).
    Holder { content: usize },
    /// A hardlink to the group's holder (index into the sorted list).
    LinkTo { holder: usize },
}

/// Groups hardlinked files by the entry holding their content, so the path
/// sorted first carries the content and the others link to it: a tar
/// hardlink must name an entry written before it.
fn plan_hardlinks(sorted: &[LayerEntry]) -> Result<Vec<Role>, LayerTarError> {
    let index: HashMap<&str, usize> = sorted.iter().enumerate().map(|(i, e)| (e.path.as_str(), i)).collect();
    let mut roles: Vec<Role> = sorted.iter().map(|_| Role::Plain).collect();
    // content entry index -> first (lowest) sorted index of its group
    let mut first: HashMap<usize, usize> = HashMap::new();
    let mut content_of = vec![None; sorted.len()];
    for (i, e) in sorted.iter().enumerate() {
        let EntryKind::File { link: Some(_), .. } = &e.kind else { continue };
        // Follow link chains to the entry with the content (a manifest links to earlier entries).
        let mut at = i;
        let mut hops = 0;
        while let EntryKind::File { link: Some(target), .. } = &sorted[at].kind {
            let target = target.trim_start_matches('/');
            at = *index
                .get(target)
                .ok_or_else(|| entry_err(&e.path, format!("hardlink target {target} is not a regular file of this layer")))?;
            hops += 1;
            if hops > sorted.len() {
                return Err(entry_err(&e.path, "hardlinks form a loop"));
            }
        }
        if !matches!(sorted[at].kind, EntryKind::File { .. }) {
            return Err(entry_err(&e.path, format!("hardlink target {} is not a regular file", sorted[at].path)));
        }
        content_of[i] = Some(at);
        let f = first.entry(at).or_insert(at);
        *f = (*f).min(i);
    }
    for (&content, &holder) in &first {
        if holder != content {
            roles[holder] = Role::Holder { content };
            roles[content] = Role::LinkTo { holder };
        }
    }
    for (i, c) in content_of.iter().enumerate() {
        if let Some(c) = c {
            let holder = first[c];
            if holder != i {
                roles[i] = Role::LinkTo { holder };
            }
        }
    }
    Ok(roles)
}

const BLOCK: usize = 512;
const OCTAL_7: u64 = 0o7777777;
const OCTAL_11: u64 = 0o77777777777;

/// The tar encoder: headers by hand (it is a fixed 512-byte layout), file
/// bodies streamed through one reusable buffer.
struct TarWriter<W: Write> {
    out: W,
    epoch: Option<i64>,
    buf: Vec<u8>,
}

struct Header<'a> {
    path: String,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    kind: u8,
    link: &'a str,
    dev: (u32, u32),
    xattrs: &'a [kiln_protocol::Xattr],
}

impl<W: Write> TarWriter<W> {
    fn new(out: W, epoch: Option<i64>) -> Self {
        Self { out, epoch, buf: vec![0; 1 << 17] }
    }

    fn mtime(&self, e: &LayerEntry) -> i64 {
        match self.epoch {
            Some(epoch) if e.mtime > epoch => epoch,
            _ => e.mtime,
        }
    }

    fn base<'a>(&self, e: &'a LayerEntry, path: String, kind: u8) -> Header<'a> {
        Header {
            path,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            size: 0,
            mtime: self.mtime(e),
            kind,
            link: "",
            dev: (0, 0),
            xattrs: &e.xattrs,
        }
    }

    /// Writes `e`; for a regular file the bytes come from `content_entry`
    /// (the hardlink group's content entry) or `e` itself.
    fn entry(
        &mut self,
        e: &LayerEntry,
        content_entry: Option<&LayerEntry>,
        contents: &mut dyn ContentSource,
    ) -> Result<(), LayerTarError> {
        let io = |source| LayerTarError::Entry { path: e.path.clone(), source };
        match &e.kind {
            EntryKind::File { size, .. } => {
                let source = content_entry.unwrap_or(e);
                let size = match &source.kind {
                    EntryKind::File { size, .. } => *size,
                    _ => *size,
                };
                let mut h = self.base(e, e.path.clone(), b'0');
                h.size = size;
                self.header(&h).map_err(io)?;
                let reader = contents.open(source).map_err(|err| LayerTarError::Entry { path: source.path.clone(), source: err })?;
                self.body(reader, size, &source.path)?;
            }
            EntryKind::Dir { opaque } => {
                let h = self.base(e, format!("{}/", e.path), b'5');
                self.header(&h).map_err(io)?;
                if *opaque {
                    let marker = LayerEntry {
                        path: format!("{}/.wh..wh..opq", e.path),
                        kind: EntryKind::File { size: 0, link: None },
                        mode: 0,
                        uid: 0,
                        gid: 0,
                        mtime: e.mtime,
                        mtime_nsec: 0,
                        xattrs: Vec::new(),
                    };
                    let h = self.base(&marker, marker.path.clone(), b'0');
                    self.header(&h).map_err(io)?;
                }
            }
            EntryKind::Symlink { target } => {
                let mut h = self.base(e, e.path.clone(), b'2');
                h.link = target;
                self.header(&h).map_err(io)?;
            }
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                let kind = if matches!(e.kind, EntryKind::CharDevice { .. }) { b'3' } else { b'4' };
                let mut h = self.base(e, e.path.clone(), kind);
                h.dev = (*major, *minor);
                self.header(&h).map_err(io)?;
            }
            EntryKind::Fifo => {
                let h = self.base(e, e.path.clone(), b'6');
                self.header(&h).map_err(io)?;
            }
            // Docker skips sockets: they are meaningless outside a running system.
            EntryKind::Socket => {}
            EntryKind::Whiteout => {
                let path = match e.path.rsplit_once('/') {
                    Some((dir, name)) => format!("{dir}/.wh.{name}"),
                    None => format!(".wh.{}", e.path),
                };
                let mut h = self.base(e, path, b'0');
                h.mode = 0;
                h.uid = 0;
                h.gid = 0;
                h.xattrs = &[];
                self.header(&h).map_err(io)?;
            }
        }
        Ok(())
    }

    fn hardlink(&mut self, e: &LayerEntry, target: &str) -> Result<(), LayerTarError> {
        let mut h = self.base(e, e.path.clone(), b'1');
        h.link = target;
        self.header(&h).map_err(|source| LayerTarError::Entry { path: e.path.clone(), source })
    }

    /// Copies exactly `size` bytes from `reader`, then pads to a block.
    fn body(&mut self, mut reader: Box<dyn Read + '_>, size: u64, path: &str) -> Result<(), LayerTarError> {
        let io = |source| LayerTarError::Entry { path: path.to_string(), source };
        let mut left = size;
        loop {
            // Ask for one byte more than expected so a longer content is noticed.
            let want = (left + 1).min(self.buf.len() as u64) as usize;
            let n = match reader.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            if n as u64 > left {
                let mut extra = n as u64 - left;
                extra += io::copy(&mut reader, &mut io::sink()).map_err(io)?;
                return Err(LayerTarError::SizeMismatch { path: path.to_string(), expected: size, actual: size + extra });
            }
            self.out.write_all(&self.buf[..n]).map_err(io)?;
            left -= n as u64;
        }
        if left > 0 {
            return Err(LayerTarError::SizeMismatch { path: path.to_string(), expected: size, actual: size - left });
        }
        self.pad(size).map_err(io)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (name, prefix) = match split_ustar_path(&h.path) {
            Some(split) => split,
            None => {
                pax.push(("path".into(), h.path.as_bytes().to_vec()));
                (truncate(&h.path, 100), "")
            }
        };
        let link = if h.link.len() > 100 {
            pax.push(("linkpath".into(), h.link.as_bytes().to_vec()));
            truncate(h.link, 100)
        } else {
            h.link
        };
        let fits = |v: u64, max: u64, key: &str, pax: &mut Vec<(String, Vec<u8>)>| {
            if v > max {
                pax.push((key.to_string(), v.to_string().into_bytes()));
                0
            } else {
                v
            }
        };
        let uid = fits(h.uid as u64, OCTAL_7, "uid", &mut pax);
        let gid = fits(h.gid as u64, OCTAL_7, "gid", &mut pax);
        let size = fits(h.size, OCTAL_11, "size", &mut pax);
        let mtime = if h.mtime < 0 || h.mtime as u64 > OCTAL_11 {
            pax.push(("mtime".into(), h.mtime.to_string().into_bytes()));
            0
        } else {
            h.mtime as u64
        };
        for x in h.xattrs {
            pax.push((format!("SCHILY.xattr.{}", x.name), x.value.clone()));
        }
        if !pax.is_empty() {
            pax.sort();
            let mut body = Vec::new();
            for (k, v) in &pax {
                pax_record(&mut body, k, v);
            }
            let mut ph = [0u8; BLOCK];
            let pax_name = pax_header_name(&h.path);
            put_bytes(&mut ph[0..100], pax_name.as_bytes());
            ustar_fields(&mut ph, 0o644, 0, 0, body.len() as u64, mtime, b'x', "", (0, 0), "");
            self.out.write_all(&ph)?;
            self.out.write_all(&body)?;
            self.pad(body.len() as u64)?;
        }
        let mut block = [0u8; BLOCK];
        put_bytes(&mut block[0..100], name.as_bytes());
        let dev = if matches!(h.kind, b'3' | b'4') { h.dev } else { (0, 0) };
        ustar_fields(&mut block, h.mode as u64, uid, gid, size, mtime, h.kind, link, dev, prefix);
        self.out.write_all(&block)
    }

    fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

/// Splits a path into USTAR (name, prefix), or None when it needs PAX.
fn split_ustar_path(path: &str) -> Option<(&str, &str)> {
    if !path.is_ascii() {
        // Non-ASCII names go to PAX (UTF-8 by definition), as Go does.
        return None;
    }
    if path.len() <= 100 {
        return Some((path, ""));
    }
    if path.len() > 256 {
        return None;
    }
    // The prefix ends at a `/` (not stored), the name takes the rest.
    let bytes = path.as_bytes();
    let lo = path.len().saturating_sub(101);
    (lo..bytes.len().min(156))
        .find(|&i| bytes[i] == b'/' && path.len() - i - 1 <= 100 && i > 0 && i < path.len() - 1)
        .map(|i| (&path[i + 1..], &path[..i]))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `<dir>/PaxHeaders.0/<base>` like Go, cut to the name field.
fn pax_header_name(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    let (dir, base) = match trimmed.rsplit_once('/') {
        Some((d, b)) => (d, b),
        None => ("", trimmed),
    };
    let name = if dir.is_empty() { format!("PaxHeaders.0/{base}") } else { format!("{dir}/PaxHeaders.0/{base}") };
    truncate(&name, 100).to_string()
}

/// One PAX record: "<len> <key>=<value>\n", where len counts itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Zero-padded octal with a NUL terminator, as Go writes it.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

#[allow(clippy::too_many_arguments)]
fn ustar_fields(
    b: &mut [u8; BLOCK],
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    kind: u8,
    link: &str,
    dev: (u32, u32),
    prefix: &str,
) {
    put_octal(&mut b[100..108], mode);
    put_octal(&mut b[108..116], uid);
    put_octal(&mut b[116..124], gid);
    put_octal(&mut b[124..136], size);
    put_octal(&mut b[136..148], mtime);
    b[156] = kind;
    put_bytes(&mut b[157..257], link.as_bytes());
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // uname/gname stay empty: owners are numeric.
    put_octal(&mut b[329..337], (dev.0 as u64).min(OCTAL_7));
    put_octal(&mut b[337..345], (dev.1 as u64).min(OCTAL_7));
    put_bytes(&mut b[345..500], prefix.as_bytes());
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| x as u64).sum();
    put_octal(&mut b[148..155], sum);
    b[155] = b' ';
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kiln_protocol::Xattr;
    use std::collections::HashMap;

    /// Contents by path; records the order `open` was called in.
    #[derive(Default)]
    pub(crate) struct MapContents {
        pub files: HashMap<String, Vec<u8>>,
        pub opened: Vec<String>,
    }

    impl ContentSource for MapContents {
        fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
            self.opened.push(entry.path.clone());
            let data = self.files.get(&entry.path).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, entry.path.clone()))?;
            Ok(Box::new(&data[..]))
        }
    }

    pub(crate) fn entry(path: &str, kind: EntryKind) -> LayerEntry {
        let mode = match kind {
            EntryKind::Dir { .. } => 0o755,
            EntryKind::Symlink { .. } => 0o777,
            _ => 0o644,
        };
        LayerEntry { path: path.into(), kind, mode, uid: 0, gid: 0, mtime: 1_700_000_000, mtime_nsec: 123, xattrs: vec![] }
    }
    pub(crate) fn dir(path: &str) -> LayerEntry {
        entry(path, EntryKind::Dir { opaque: false })
    }
    pub(crate) fn file(path: &str, data: &[u8], c: &mut MapContents) -> LayerEntry {
        c.files.insert(path.into(), data.to_vec());
        entry(path, EntryKind::File { size: data.len() as u64, link: None })
    }

    #[derive(Debug, PartialEq)]
    pub(crate) struct Read_ {
        pub path: String,
        pub kind: u8,
        pub mode: u32,
        pub uid: u64,
        pub gid: u64,
        pub mtime: u64,
        pub link: String,
        pub data: Vec<u8>,
        pub pax: Vec<(String, Vec<u8>)>,
        pub dev: (u32, u32),
        pub names: (Vec<u8>, Vec<u8>),
    }

    pub(crate) fn uncompressed(store: &Store, layer: &Layer) -> Vec<u8> {
        let blob = store.read_blob(layer.descriptor.digest(), Some(layer.descriptor.size())).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut out).unwrap();
        out
    }

    pub(crate) fn read_tar(bytes: &[u8]) -> Vec<Read_> {
        let mut a = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let pax = match e.pax_extensions().unwrap() {
                Some(p) => p.map(|x| x.unwrap()).map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec())).collect(),
                None => vec![],
            };
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push(Read_ {
                path: String::from_utf8(e.path_bytes().to_vec()).unwrap(),
                kind: h.entry_type().as_byte(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                link: e.link_name_bytes().map(|l| String::from_utf8(l.to_vec()).unwrap()).unwrap_or_default(),
                data,
                pax,
                dev: (h.device_major().unwrap().unwrap_or(0), h.device_minor().unwrap().unwrap_or(0)),
                names: (h.username_bytes().unwrap_or_default().to_vec(), h.groupname_bytes().unwrap_or_default().to_vec()),
            });
        }
        out
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join("store")).unwrap();
        (d, s)
    }

    fn write(store: &Store, entries: &mut Vec<LayerEntry>, c: &mut MapContents, opts: LayerOptions) -> Layer {
        write_layer(store, entries, c, &opts).unwrap().expect("a layer")
    }

    #[test]
    fn empty_diff_adds_no_layer() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        assert!(write_layer(&s, &mut vec![], &mut c, &LayerOptions::default()).unwrap().is_none());
        // Only the root directory is no diff either.
        assert!(write_layer(&s, &mut vec![dir("")], &mut c, &LayerOptions::default()).unwrap().is_none());
        assert_eq!(std::fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(), 0);
    }

    #[test]
    fn entries_are_sorted_parents_first_by_component() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        let mut entries = vec![
            file("a.b", b"x", &mut c),
            file("a/b", b"hello", &mut c),
            dir("a"),
            file("a/b.c", b"", &mut c),
            dir("A"),
        ];
        let layer = write(&s, &mut entries, &mut c, LayerOptions::default());
        let got = read_tar(&uncompressed(&s, &layer));
        let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["A/", "a/", "a/b", "a/b.c", "a.b"]);
        assert_eq!(c.opened, ["a/b", "a/b.c", "a.b"], "contents are opened in written order");
        let f = &got[2];
        assert_eq!((f.kind, f.mode, f.data.as_slice(), f.mtime), (b'0', 0o644, &b"hello"[..], 1_700_000_000));
        assert_eq!(f.names, (vec![], vec![]), "uname/gname stay empty");
        assert_eq!(layer.descriptor.media_type().to_string(), crate::oci::media::OCI_LAYER_GZIP);
    }

    #[test]
    fn whiteouts_opaque_dirs_links_devices_and_fifos() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        let mut entries = vec![
            entry("etc/gone", EntryKind::Whiteout),
            entry("top", EntryKind::Whiteout),
            entry("var", EntryKind::Dir { opaque: true }),
            file("var/new", b"n", &mut c),
            entry("etc", EntryKind::Dir { opaque: false }),
            entry("etc/sh", EntryKind::Symlink { target: "/bin/busybox".into() }),
            entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }),
            entry("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 }),
            entry("dev/fifo", EntryKind::Fifo),
            entry("dev/sock", EntryKind::Socket),
        ];
        let layer = write(&s, &mut entries, &mut c, LayerOptions::default());
        let got = read_tar(&uncompressed(&s, &layer));
        let summary: Vec<(&str, u8, &str)> = got.iter().map(|r| (r.path.as_str(), r.kind, r.link.as_str())).collect();
        assert_eq!(
            summary,
            [
                ("dev/fifo", b'6', ""),
                ("dev/null", b'3', ""),
                ("dev/sda", b'4', ""),
                ("etc/", b'5', ""),
                ("etc/.wh.gone", b'0', ""),
                ("etc/sh", b'2', "/bin/busybox"),
                (".wh.top", b'0', ""),
                ("var/", b'5', ""),
                ("var/.wh..wh..opq", b'0', ""),
                ("var/new", b'0', ""),
            ]
        );
        assert_eq!(got[1].dev, (1, 3));
        assert_eq!(got[2].dev, (8, 0));
        let wh = &got[4];
        assert_eq!((wh.mode, wh.uid, wh.gid, wh.data.len()), (0, 0, 0, 0));
    }

    #[test]
    fn hardlinks_point_at_the_first_written_path() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        let mut content = file("z/orig", b"shared bytes", &mut c);
        content.mode = 0o755;
        let link = |p: &str, to: &str| {
            let mut e = entry(p, EntryKind::File { size: 12, link: Some(to.into()) });
            e.mode = 0o755;
            e
        };
        // The manifest links to earlier entries (z/orig first), but sorting puts a/first before it.
        let mut entries = vec![dir("z"), dir("a"), content, link("a/first", "z/orig"), link("m/chain", "a/first")];
        let layer = write(&s, &mut entries, &mut c, LayerOptions::default());
        let got = read_tar(&uncompressed(&s, &layer));
        let summary: Vec<(&str, u8, &str, &[u8])> =
            got.iter().map(|r| (r.path.as_str(), r.kind, r.link.as_str(), r.data.as_slice())).collect();
        assert_eq!(
            summary,
            [
                ("a/", b'5', "", &b""[..]),
                ("a/first", b'0', "", &b"shared bytes"[..]),
                ("m/chain", b'1', "a/first", &b""[..]),
                ("z/", b'5', "", &b""[..]),
                ("z/orig", b'1', "a/first", &b""[..]),
            ]
        );
        assert_eq!(c.opened, ["z/orig"], "content is asked for with the entry that holds it");
        assert_eq!(got[1].mode, 0o755);
    }

    #[test]
    fn hardlink_to_a_missing_entry_is_an_error() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        let mut entries = vec![entry("a", EntryKind::File { size: 1, link: Some("nope".into()) })];
        let err = write_layer(&s, &mut entries, &mut c, &LayerOptions::default()).unwrap_err();
        assert!(err.to_string().contains("a:") && err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn xattrs_long_names_and_large_ids_use_pax() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        let mut ping = file("usr/bin/ping", b"ELF", &mut c);
        ping.xattrs = vec![
            Xattr { name: "security.capability".into(), value: vec![1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0xff, 0x0b] },
            Xattr { name: "user.note".into(), value: b"hi".to_vec() },
        ];
        let deep = format!("{}/{}", "d".repeat(120), "f".repeat(90)); // fits ustar prefix + name
        let long = format!("{}/{}", "l".repeat(200), "n".repeat(120)); // needs PAX
        let target = "t".repeat(150);
        let mut big = file("big-ids", b"", &mut c);
        big.uid = 3_000_000;
        big.gid = 70_000;
        let mut entries = vec![
            ping,
            file(&deep, b"deep", &mut c),
            file(&long, b"long", &mut c),
            entry("ln", EntryKind::Symlink { target: target.clone() }),
            file("ünï", b"utf8", &mut c),
            big,
        ];
        let layer = write(&s, &mut entries, &mut c, LayerOptions::default());
        let bytes = uncompressed(&s, &layer);
        let got = read_tar(&bytes);
        let by: HashMap<&str, &Read_> = got.iter().map(|r| (r.path.as_str(), r)).collect();
        let p = by["usr/bin/ping"];
        assert_eq!(
            p.pax,
            [
                ("SCHILY.xattr.security.capability".to_string(), vec![1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0xff, 0x0b]),
                ("SCHILY.xattr.user.note".to_string(), b"hi".to_vec()),
            ]
        );
        assert_eq!(by[deep.as_str()].data, b"deep");
        assert!(by[deep.as_str()].pax.is_empty(), "a path that fits name+prefix needs no PAX");
        assert_eq!(by[long.as_str()].data, b"long");
        assert_eq!(by["ln"].link, target);
        assert_eq!(by["ünï"].data, b"utf8");
        let b = by["big-ids"];
        assert!(b.pax.contains(&("uid".into(), b"3000000".to_vec())), "{:?}", b.pax);
        assert_eq!(b.gid, 70_000, "a gid that fits 7 octal digits stays in the header");
        // GNU tar agrees on the names, owners and xattrs.
        if let Ok(out) = std::process::Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-tvf", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(&bytes)?;
                child.wait_with_output()
            })
        {
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "GNU tar rejected the layer: {listing}");
            assert!(listing.contains(&long), "{listing}");
            assert!(listing.contains("3000000/70000"), "{listing}");
        }
    }

    #[test]
    fn mtimes_are_whole_seconds_clamped_to_source_date_epoch() {
        let (_d, s) = store();
        let mut c = MapContents::default();
        let mut old = file("old", b"o", &mut c);
        old.mtime = 1000;
        let mut new = file("new", b"n", &mut c);
        new.mtime = 2_000_000_000;
        let mut entries = vec![old, new];
        let opts = LayerOptions { source_date_epoch: Some(1_500_000_000), ..Default::default() };
        let got = read_tar(&uncompressed(&s, &write(&s, &mut entries, &mut c, opts)));
        let m: Vec<(&str, u64)> = got.iter().map(|r| (r.path.as_str(), r.mtime)).collect();
        assert_eq!(m, [("new", 1_500_000_000), ("old", 1000)]);
        assert!(got.iter().all(|r| r.pax.is_empty()), "no PAX mtime with nanoseconds");
    }

    #[test]
    fn equal_input_gives_equal_digests() {
        let (_d, s) = store();
        let make = |order: bool| {
            let mut c = MapContents::default();
            let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect();
            let mut v = vec![dir("d"), file("d/big", &big, &mut c), file("d/small", b"s", &mut c)];
            if order {
                v.reverse();
            }
            (v, c)
        };
        let (mut a, mut ca) = make(false);
        let (mut b, mut cb) = make(true);
        for comp in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let opts = LayerOptions { compression: comp, ..Default::default() };
            let la = write(&s, &mut a, &mut ca, opts);
            let lb = write(&s, &mut b, &mut cb, opts);
            assert_eq!(la.descriptor.digest(), lb.descriptor.digest(), "{comp:?}");
            assert_eq!(la.diff_id, lb.diff_id);
        }
    }

    #[test]
    fn content_longer_or_shorter_than_the_manifest_is_an_error() {
        let (_d, s) = store();
        for (claimed, actual) in [(10u64, 4u64), (2, 4)] {
            let mut c = MapContents::default();
            let mut e = file("etc/f", &vec![b'x'; actual as usize], &mut c);
            e.kind = EntryKind::File { size: claimed, link: None };
            let err = write_layer(&s, &mut vec![e], &mut c, &LayerOptions::default()).unwrap_err();
            match err {
                LayerTarError::SizeMismatch { path, expected, actual: got } => {
                    assert_eq!((path.as_str(), expected, got), ("etc/f", claimed, actual));
                }
                other => panic!("expected a size mismatch, got {other}"),
            }
        }
        assert_eq!(std::fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(), 0, "no blob from a failed layer");
    }

    #[test]
    fn unnormalised_or_duplicate_paths_are_refused() {
        let (_d, s) = store();
        for bad in ["/abs", "a/../b", "a//b", "./a", "a/"] {
            let mut c = MapContents::default();
            let err = write_layer(&s, &mut vec![dir(bad)], &mut c, &LayerOptions::default()).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        let mut c = MapContents::default();
        assert!(write_layer(&s, &mut vec![dir("a"), dir("a")], &mut c, &LayerOptions::default()).is_err());
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for len in [0usize, 1, 85, 86, 87, 990, 995, 996, 9990] {
            let mut out = Vec::new();
            pax_record(&mut out, "k", &vec![b'v'; len]);
            let text = String::from_utf8(out.clone()).unwrap();
            let n: usize = text.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(n, out.len(), "value length {len}");
        }
    }
}
