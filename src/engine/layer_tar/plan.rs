//! The layer planner: what goes in a layer and how it is laid out, handed
//! to the USTAR encoder entry by entry. Paths are checked (relative,
//! normalised, listed once) and put in the one layer order
//! ([`kiln_protocol::sort_for_layer`]: parents before children); hardlink
//! groups are planned so the first path written holds the content; mtimes
//! are whole seconds clamped to SOURCE_DATE_EPOCH; directories get a
//! trailing `/`, whiteouts become empty `.wh.<name>` files and opaque
//! directories the directory followed by `<dir>/.wh..wh..opq`; sockets are
//! skipped, as Docker and BuildKit do.

use std::collections::HashMap;
use std::io::{self, Write};

use kiln_protocol::{sort_for_layer, EntryKind, LayerEntry};

use super::ustar::{BodyError, Header, TarEncoder};
use super::{ContentSource, LayerOptions, LayerTarError};

fn entry_err(path: &str, message: impl Into<String>) -> LayerTarError {
    LayerTarError::Entry { path: path.to_string(), source: io::Error::new(io::ErrorKind::InvalidInput, message.into()) }
}

/// Checks that a layer path is relative and normalised: no leading `/`, no
/// empty, `.` or `..` components.
fn check_path(path: &str) -> Result<(), LayerTarError> {
    if path.starts_with('/') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") || path.contains('\0') {
        return Err(entry_err(path, "a layer path must be relative and normalised (no leading /, no empty, . or .. components)"));
    }
    Ok(())
}

/// In an OCI layer a `.wh.` name is a whiteout: a file stored under one
/// would delete its namesake wherever the layer is unpacked.
fn check_name(e: &LayerEntry) -> Result<(), LayerTarError> {
    let name = e.path.rsplit('/').next().unwrap_or(&e.path);
    if name.starts_with(".wh.") && !matches!(e.kind, EntryKind::Whiteout) {
        return Err(LayerTarError::ReservedName { path: e.path.clone() });
    }
    Ok(())
}

/// Checks, sorts and writes `entries`, then the end-of-archive blocks.
pub(super) fn write_entries<W: Write>(
    entries: &mut [LayerEntry],
    contents: &mut dyn ContentSource,
    opts: &LayerOptions,
    out: W,
) -> Result<W, LayerTarError> {
    for e in entries.iter() {
        check_path(&e.path)?;
        check_name(e)?;
    }
    sort_for_layer(entries);
    if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(entry_err(&w[0].path, "the path is listed twice"));
    }
    let plan = plan_hardlinks(entries)?;
    let mut tar = LayerTar { tar: TarEncoder::new(out), epoch: opts.source_date_epoch };
    for (i, e) in entries.iter().enumerate() {
        let result = match &plan[i] {
            Role::Plain => tar.entry(e, None, contents),
            Role::Holder { content } => tar.entry(e, Some(&entries[*content]), contents),
            Role::LinkTo { holder } => tar.hardlink(e, &entries[*holder].path),
        };
        result?;
    }
    tar.tar.finish().map_err(|source| LayerTarError::Entry { path: "(end of archive)".into(), source })
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

/// Turns layer entries into tar headers (and file bodies) for the encoder.
struct LayerTar<W: Write> {
    tar: TarEncoder<W>,
    epoch: Option<i64>,
}

impl<W: Write> LayerTar<W> {
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
                self.tar.header(&h).map_err(io)?;
                let reader = contents.open(source).map_err(|err| LayerTarError::Entry { path: source.path.clone(), source: err })?;
                self.tar.body(reader, size).map_err(|err| match err {
                    BodyError::Io(err) => LayerTarError::Entry { path: source.path.clone(), source: err },
                    BodyError::Size { actual } => {
                        LayerTarError::SizeMismatch { path: source.path.clone(), expected: size, actual }
                    }
                })?;
            }
            EntryKind::Dir { opaque } => {
                let h = self.base(e, format!("{}/", e.path), b'5');
                self.tar.header(&h).map_err(io)?;
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
                    self.tar.header(&h).map_err(io)?;
                }
            }
            EntryKind::Symlink { target } => {
                let mut h = self.base(e, e.path.clone(), b'2');
                h.link = target;
                self.tar.header(&h).map_err(io)?;
            }
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                let kind = if matches!(e.kind, EntryKind::CharDevice { .. }) { b'3' } else { b'4' };
                let mut h = self.base(e, e.path.clone(), kind);
                h.dev = (*major, *minor);
                self.tar.header(&h).map_err(io)?;
            }
            EntryKind::Fifo => {
                let h = self.base(e, e.path.clone(), b'6');
                self.tar.header(&h).map_err(io)?;
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
                self.tar.header(&h).map_err(io)?;
            }
        }
        Ok(())
    }

    fn hardlink(&mut self, e: &LayerEntry, target: &str) -> Result<(), LayerTarError> {
        let mut h = self.base(e, e.path.clone(), b'1');
        h.link = target;
        self.tar.header(&h).map_err(|source| LayerTarError::Entry { path: e.path.clone(), source })
    }
}
