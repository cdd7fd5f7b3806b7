//! COPY and ADD: which entries a step adds, where their bytes come from, and
//! the content checksum that goes into the step's cache key.
//!
//! The semantics are BuildKit's (dockerfile2llb + fsutil's copy): a source
//! is a path inside its root (the context, or another stage's or image's
//! file system) and is resolved following symlinks without ever leaving that
//! root; a directory source copies its contents; wildcards are Go's
//! `filepath.Match` per path element, and one that matches nothing copies
//! nothing; symlinks inside a copied tree stay symlinks; mtimes and modes are
//! kept; missing parents of the destination are created 0755, owned by the
//! `--chown` user. Nothing is written to the host except a private,
//! unnamed spool file for unpacked archives and downloads.

mod add;
pub(crate) use add::read_full;
pub(crate) use add::{decompress, download_to_file, is_git, member_path, sniff_download, sniff_head, ArchiveKind};
mod chmod;
mod content;
mod source;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use kiln_protocol::{EntryKind, LayerEntry};
use sha2::{Digest, Sha256};

use self::chmod::Chmod;
use self::content::{hash_reader, Content, PlanContents, Spool};
use self::source::{Fs, SrcEntry};
use super::context::{join, open_in_root, BuildContext, ContextError};
use super::layer_tar::ContentSource;
use super::rootfs::{LayerStack, RootfsError};
use super::users::Identity;
use crate::dockerfile::dockerignore::{clean, IgnoreMatcher};
use crate::dockerfile::glob;
use crate::oci::store::Store;

/// Where COPY reads from.
pub enum CopySource<'a> {
    /// The build context.
    Context(&'a BuildContext),
    /// Another stage's or an image's file system (`--from`).
    Stack { stack: &'a LayerStack, store: &'a Store },
}

/// One COPY or ADD after expansion, with what the engine knows of the stage.
pub struct CopyInput<'a> {
    /// `COPY` or `ADD` (ADD unpacks local archives and fetches URLs).
    pub add: bool,
    pub sources: &'a [String],
    /// Heredoc files: (name, content).
    pub inline: &'a [(String, String)],
    pub dest: &'a str,
    /// The stage's WORKDIR (absolute); relative `dest`s join it.
    pub workdir: &'a str,
    /// `--chown`, resolved by the engine. `None` keeps the owners of a
    /// `--from` stage's files and of an ADDed archive's entries, and makes
    /// everything else 0:0.
    pub owner: Option<Identity>,
    pub chmod: Option<&'a str>,
    pub parents: bool,
    pub exclude: &'a [String],
    /// ADD: `--checksum`, `--unpack`.
    pub checksum: Option<&'a str>,
    pub unpack: Option<bool>,
    /// The destination stage's file system (symlinked parents of `dest` are followed in it).
    pub dest_root: &'a LayerStack,
    /// Set on Ctrl-C: an ADD download stops.
    pub cancel: &'a AtomicBool,
}

/// The flag of a copy nobody interrupts.
static NEVER: AtomicBool = AtomicBool::new(false);

impl<'a> CopyInput<'a> {
    /// A plain COPY of `sources` to `dest`: no owner, mode, exclusions or
    /// ADD options (set those fields on the result where they apply).
    pub fn new(add: bool, sources: &'a [String], dest: &'a str, workdir: &'a str, dest_root: &'a LayerStack) -> Self {
        CopyInput {
            add,
            sources,
            inline: &[],
            dest,
            workdir,
            owner: None,
            chmod: None,
            parents: false,
            exclude: &[],
            checksum: None,
            unpack: None,
            dest_root,
            cancel: &NEVER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Source(String),
    #[error("{verb} failed: \"/{path}\": not found")]
    NotFound { verb: &'static str, path: String },
    #[error("{verb} source {source_path} is outside the {root}")]
    Outside { verb: &'static str, source_path: String, root: &'static str },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{verb} failed: {message}")]
    Dest { verb: &'static str, message: String },
    #[error("{0}")]
    Chmod(String),
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("downloading {url}: {message}")]
    Download { url: String, message: String },
    #[error("{url}: checksum mismatch: --checksum is {expected}, the download is {actual}")]
    ChecksumMismatch { url: String, expected: String, actual: String },
    #[error("ADD {archive}: {message}")]
    Archive { archive: String, message: String },
}

/// What a COPY/ADD step writes.
pub struct CopyPlan {
    pub entries: Vec<LayerEntry>,
    pub contents: Box<dyn ContentSource>,
    /// sha256 over every source's path, type, mode and content: the step's
    /// cache key input (mtimes are not part of it).
    pub checksum: String,
}

pub fn plan(input: &CopyInput<'_>, source: CopySource<'_>) -> Result<CopyPlan, CopyError> {
    let verb = if input.add { "ADD" } else { "COPY" };
    check_checksum_flag(input, verb)?;
    let chmod = input.chmod.map(Chmod::parse).transpose().map_err(CopyError::Chmod)?;
    let exclude = if input.exclude.is_empty() {
        None
    } else {
        let text = input.exclude.join("\n");
        Some(IgnoreMatcher::parse(&text, Path::new("--exclude")).map_err(|e| CopyError::Source(format!("{verb} --exclude: {e}")))?)
    };
    let fs = match source {
        CopySource::Context(c) => Fs::Context(c),
        CopySource::Stack { stack, store } => Fs::Stack { stack, store },
    };
    let count = input.sources.len() + input.inline.len();
    let dest = Dest::new(input)?;
    if count > 1 && !dest.trailing {
        return Err(CopyError::Dest {
            verb,
            message: format!(
                "when using {verb} with more than one source file, the destination must be a directory and end with a / (got {})",
                input.dest
            ),
        });
    }
    let now = now();
    let mut p = Planner {
        verb,
        input,
        fs,
        chmod,
        exclude,
        owner: input.owner.as_ref().map(|o| (o.uid, o.gid)),
        now,
        dest,
        out: BTreeMap::new(),
        spool: Spool::default(),
    };
    for src in input.sources {
        p.source(src)?;
    }
    for (name, text) in input.inline {
        p.inline(name, text)?;
    }
    p.finish()
}

/// `--checksum` is for one HTTP(S) source of ADD, as in BuildKit.
fn check_checksum_flag(input: &CopyInput<'_>, verb: &'static str) -> Result<(), CopyError> {
    let Some(sum) = input.checksum else { return Ok(()) };
    let bad = |m: &str| Err(CopyError::Source(format!("{verb} --checksum={sum}: {m}")));
    if !input.add {
        return bad("checksum can't be specified for COPY");
    }
    if input.sources.len() != 1 || !input.inline.is_empty() {
        return bad("checksum can't be specified for multiple sources");
    }
    if !add::is_http(&input.sources[0]) {
        return bad("checksum requires HTTP(S) sources");
    }
    add::ExpectedDigest::parse(sum).map(|_| ())
}

fn now() -> (i64, u32) {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    }
}

/// The destination: resolved through `dest_root`'s symlinks.
struct Dest {
    /// Relative to the image root, symlinks resolved; "" is the root.
    rel: String,
    /// Written with a trailing `/` (or `.`): always a directory.
    trailing: bool,
}

impl Dest {
    fn new(input: &CopyInput<'_>) -> Result<Self, CopyError> {
        let d = input.dest;
        let trailing = d.is_empty() || d == "." || d.ends_with('/') || d.ends_with("/.");
        let abs = if d.starts_with('/') { d.to_string() } else { format!("{}/{}", input.workdir, d) };
        let cleaned = clean(&abs);
        let rel = cleaned.trim_start_matches('/');
        let rel = if rel.is_empty() || rel == "." { String::new() } else { input.dest_root.resolve(rel)? };
        Ok(Dest { rel, trailing })
    }
}

/// One planned entry of the layer.
struct Planned {
    entry: LayerEntry,
    content: Option<Content>,
    /// sha256 of the content, when known before [`Planner::finish`].
    hash: Option<[u8; 32]>,
    /// Hardlink group: entries with the same key share one inode.
    group: Option<String>,
}

struct Planner<'a> {
    verb: &'static str,
    input: &'a CopyInput<'a>,
    fs: Fs<'a>,
    chmod: Option<Chmod>,
    exclude: Option<IgnoreMatcher>,
    owner: Option<(u32, u32)>,
    now: (i64, u32),
    dest: Dest,
    out: BTreeMap<String, Planned>,
    spool: Spool,
}

fn is_dir(e: &LayerEntry) -> bool {
    matches!(e.kind, EntryKind::Dir { .. })
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl<'a> Planner<'a> {
    fn dest_err(&self, message: String) -> CopyError {
        CopyError::Dest { verb: self.verb, message }
    }

    /// `src` as a clean path relative to the source root; `..` that would
    /// climb above it is an error (not silently clamped).
    fn normalize(&self, src: &str) -> Result<String, CopyError> {
        // Relative to the root even when written absolute, so `/../x` climbs too.
        let cleaned = clean(src.trim_start_matches('/'));
        let rel = cleaned.as_str();
        if rel == ".." || rel.starts_with("../") {
            let root = if matches!(self.fs, Fs::Context(_)) { "build context" } else { "source stage's root" };
            return Err(CopyError::Outside { verb: self.verb, source_path: src.to_string(), root });
        }
        Ok(if rel == "." { String::new() } else { rel.to_string() })
    }

    /// Whether the resolved destination is (or will be) a directory.
    fn dest_is_dir(&self) -> bool {
        self.dest.trailing || self.dest.rel.is_empty() || self.existing(&self.dest.rel) == Some(true)
    }

    /// `Some(is_dir)` of what is at `path` after the entries planned so far.
    fn existing(&self, path: &str) -> Option<bool> {
        if path.is_empty() {
            return Some(true);
        }
        match self.out.get(path) {
            Some(p) => Some(is_dir(&p.entry)),
            None => self.input.dest_root.entry(path).map(is_dir),
        }
    }

    fn owner_of(&self, uid: u32, gid: u32) -> (u32, u32) {
        self.owner.unwrap_or((uid, gid))
    }

    /// Makes `path` and its parents directories: existing ones are kept
    /// as they are, missing ones are created 0755 and owned by --chown.
    fn ensure_dir(&mut self, path: &str) -> Result<(), CopyError> {
        if path.is_empty() {
            return Ok(());
        }
        let mut cur = String::new();
        for comp in path.split('/') {
            cur = join(&cur, comp);
            if let Some(p) = self.out.get(&cur) {
                if is_dir(&p.entry) {
                    continue;
                }
                return Err(self.dest_err(format!("cannot copy to non-directory: /{cur}")));
            }
            let entry = match self.input.dest_root.entry(&cur) {
                Some(e) if is_dir(e) => {
                    let mut e = e.clone();
                    e.path = cur.clone();
                    e.kind = EntryKind::Dir { opaque: false };
                    e
                }
                Some(_) => return Err(self.dest_err(format!("cannot copy to non-directory: /{cur}"))),
                None => {
                    let (uid, gid) = self.owner_of(0, 0);
                    LayerEntry {
                        path: cur.clone(),
                        kind: EntryKind::Dir { opaque: false },
                        mode: 0o755,
                        uid,
                        gid,
                        mtime: self.now.0,
                        mtime_nsec: self.now.1,
                        xattrs: Vec::new(),
                    }
                }
            };
            self.out.insert(cur.clone(), Planned { entry, content: None, hash: None, group: None });
        }
        Ok(())
    }

    /// Adds `p`, refusing to turn a directory into a file or the other way
    /// round (as `cp -a` / BuildKit refuse); an unpacked archive replaces.
    fn put(&mut self, p: Planned, replace: bool) -> Result<(), CopyError> {
        let path = p.entry.path.clone();
        let new_dir = is_dir(&p.entry);
        match (self.existing(&path), new_dir) {
            (Some(true), false) if !replace => {
                return Err(self.dest_err(format!("cannot replace to directory /{path} with file")));
            }
            (Some(false), true) if !replace => {
                return Err(self.dest_err(format!("cannot copy to non-directory: /{path}")));
            }
            (Some(true), false) => {
                let prefix = format!("{path}/");
                self.out.retain(|k, _| !k.starts_with(&prefix));
            }
            _ => {}
        }
        self.out.insert(path, p);
        Ok(())
    }

    /// A source entry placed at `target`, with --chown and --chmod applied.
    fn put_source(&mut self, src: &SrcEntry, target: &str) -> Result<(), CopyError> {
        let mut entry = src.entry.clone();
        entry.path = target.to_string();
        let (uid, gid) = if self.fs.keeps_owner() { (entry.uid, entry.gid) } else { (0, 0) };
        (entry.uid, entry.gid) = self.owner_of(uid, gid);
        let dir = is_dir(&entry);
        if let Some(c) = &self.chmod {
            if !matches!(entry.kind, EntryKind::Symlink { .. }) {
                entry.mode = c.apply(entry.mode, dir);
            }
        }
        if let EntryKind::Dir { opaque } = &mut entry.kind {
            *opaque = false;
        }
        let content = matches!(entry.kind, EntryKind::File { .. }).then(|| self.fs.content(src));
        self.put(Planned { entry, content, hash: None, group: src.inode.clone() }, false)
    }

    fn excluded(&self, rel: &str, dir: bool) -> bool {
        match &self.exclude {
            Some(ex) => ex.is_excluded(rel) && !(dir && ex.may_include_below(rel)),
            None => false,
        }
    }

    fn source(&mut self, src: &str) -> Result<(), CopyError> {
        if add::is_git(src) {
            return Err(CopyError::Source(if self.input.add {
                format!("ADD {src}: a git repository must be ADD's only source")
            } else {
                format!("COPY {src}: source can't be a git ref for COPY")
            }));
        }
        if add::is_http(src) {
            if !self.input.add {
                return Err(CopyError::Source(format!("COPY {src}: source can't be a URL for COPY")));
            }
            return self.url(src);
        }
        if self.input.parents {
            return self.parents(src);
        }
        let rel = self.normalize(src)?;
        if !glob::has_wildcards(&rel) {
            return self.one(&rel, false);
        }
        let matches = self.expand(&rel)?;
        let multi = matches.len() > 1;
        for m in matches {
            self.one(&m, multi)?;
        }
        Ok(())
    }

    /// The paths a wildcard source matches (unresolved, sorted per level;
    /// --exclude applies to them relative to the wildcard's base).
    fn expand(&self, rel: &str) -> Result<Vec<String>, CopyError> {
        let comps: Vec<&str> = rel.split('/').collect();
        let first = comps.iter().position(|c| glob::has_wildcards(c)).unwrap_or(comps.len());
        let base = self.fs.resolve(&comps[..first].join("/"))?;
        let mut level: Vec<(String, String)> = vec![(base, String::new())];
        let rest = &comps[first..];
        for (i, comp) in rest.iter().enumerate() {
            let last = i + 1 == rest.len();
            let mut next = Vec::new();
            for (dir, from_base) in &level {
                match self.fs.entry(dir)? {
                    Some(e) if is_dir(&e.entry) => {}
                    _ => continue,
                }
                for child in self.fs.children(dir)? {
                    let name = basename(&child.entry.path);
                    if !glob::path_match(comp, name) || !last && !is_dir(&child.entry) {
                        continue;
                    }
                    next.push((child.entry.path.clone(), join(from_base, name)));
                }
            }
            level = next;
        }
        Ok(level
            .into_iter()
            .filter(|(path, from_base)| {
                let dir = matches!(self.fs.entry(path), Ok(Some(e)) if is_dir(&e.entry));
                !self.excluded(from_base, dir)
            })
            .map(|(path, _)| path)
            .collect())
    }

    /// One source path (no wildcards left): followed through symlinks, then
    /// a directory's contents or the file itself go to the destination.
    fn one(&mut self, path: &str, multi: bool) -> Result<(), CopyError> {
        let resolved = self.fs.resolve(path)?;
        let Some(src) = self.fs.entry(&resolved)? else {
            return Err(CopyError::NotFound { verb: self.verb, path: path.to_string() });
        };
        let dest = self.dest.rel.clone();
        if is_dir(&src.entry) {
            self.ensure_dir(&dest)?;
            return self.tree(&resolved, &dest);
        }
        if self.input.add && self.input.unpack != Some(false) && matches!(src.entry.kind, EntryKind::File { .. }) {
            if let Fs::Context(ctx) = self.fs {
                let io_err = |source| CopyError::Io { path: format!("/{path}"), source };
                if let Some(kind) = add::sniff_file(ctx.root(), &resolved).map_err(io_err)? {
                    self.ensure_dir(&dest)?;
                    let file = ctx.open_file(&resolved).map_err(io_err)?;
                    return self.extract(kind, Box::new(file), &format!("/{path}"), &dest);
                }
            }
        }
        let target = if self.dest_is_dir() {
            self.ensure_dir(&dest)?;
            join(&dest, basename(path))
        } else if multi {
            return Err(self.dest_err(format!(
                "/{path}: a wildcard matched more than one file, so the destination {} must be a directory and end with a /",
                self.input.dest
            )));
        } else {
            dest.clone()
        };
        self.ensure_dir(parent(&target))?;
        self.put_source(&src, &target)
    }

    /// Everything below the source directory `src`, placed below `dest`.
    fn tree(&mut self, src: &str, dest: &str) -> Result<(), CopyError> {
        self.tree_below(src, dest, "")
    }

    /// [`Self::tree`] with `rel`, the path below the copied root that --exclude sees.
    fn tree_below(&mut self, src: &str, dest: &str, rel: &str) -> Result<(), CopyError> {
        for child in self.fs.children(src)? {
            let name = basename(&child.entry.path).to_string();
            let crel = join(rel, &name);
            let dir = is_dir(&child.entry);
            if self.excluded(&crel, dir) {
                continue;
            }
            let target = join(dest, &name);
            self.put_source(&child, &target)?;
            if dir {
                self.tree_below(&child.entry.path, &target, &crel)?;
            }
        }
        Ok(())
    }

    /// `--parents`: the source's path (below an optional `/./` pivot) is
    /// kept under the destination; wildcards may appear in any element.
    fn parents(&mut self, src: &str) -> Result<(), CopyError> {
        let (base, pat) = match src.split_once("/./") {
            Some((b, p)) => (b, p),
            None => ("", src),
        };
        let base = self.normalize(base)?;
        let pat = self.normalize(pat)?;
        let base_res = self.fs.resolve(&base)?;
        let dest = self.dest.rel.clone();
        let base_dir = matches!(self.fs.entry(&base_res)?, Some(e) if is_dir(&e.entry));
        let wild = glob::has_wildcards(&base) || glob::has_wildcards(&pat);
        if !base_dir {
            if wild {
                return Ok(());
            }
            return Err(CopyError::NotFound { verb: self.verb, path: join(&base, &pat) });
        }
        self.ensure_dir(&dest)?;
        if pat.is_empty() {
            return self.tree_below(&base_res, &dest, "");
        }
        let comps: Vec<String> = pat.split('/').map(str::to_string).collect();
        let mut found = false;
        let mut ancestors = Vec::new();
        self.parents_walk(&base_res, "", &comps, &dest, &mut ancestors, &mut found)?;
        if !found && !wild {
            return Err(CopyError::NotFound { verb: self.verb, path: join(&base, &pat) });
        }
        Ok(())
    }

    fn parents_walk(
        &mut self,
        dir: &str,
        rel: &str,
        comps: &[String],
        dest: &str,
        ancestors: &mut Vec<(String, SrcEntry)>,
        found: &mut bool,
    ) -> Result<(), CopyError> {
        let depth = if rel.is_empty() { 0 } else { rel.split('/').count() };
        for child in self.fs.children(dir)? {
            let name = basename(&child.entry.path).to_string();
            if !glob::path_match(&comps[depth], &name) {
                continue;
            }
            let crel = join(rel, &name);
            let cdir = is_dir(&child.entry);
            if self.excluded(&crel, cdir) {
                continue;
            }
            if depth + 1 == comps.len() {
                // A full match: its parents (with their own metadata), itself and all below it.
                for (arel, a) in ancestors.iter() {
                    let a = a.clone();
                    self.put_source(&a, &join(dest, arel))?;
                }
                let target = join(dest, &crel);
                self.put_source(&child, &target)?;
                if cdir {
                    self.tree_below(&child.entry.path, &target, &crel)?;
                }
                *found = true;
            } else if cdir {
                ancestors.push((crel.clone(), child.clone()));
                self.parents_walk(&child.entry.path, &crel, comps, dest, ancestors, found)?;
                ancestors.pop();
            }
        }
        Ok(())
    }

    /// A heredoc: a 0644 file named after the heredoc.
    fn inline(&mut self, name: &str, text: &str) -> Result<(), CopyError> {
        let dest = self.dest.rel.clone();
        let target = if self.dest_is_dir() {
            self.ensure_dir(&dest)?;
            join(&dest, basename(name.trim_end_matches('/')))
        } else {
            dest
        };
        self.ensure_dir(parent(&target))?;
        let (uid, gid) = self.owner_of(0, 0);
        let mode = self.chmod.as_ref().map_or(0o644, |c| c.apply(0o644, false));
        let bytes = text.as_bytes().to_vec();
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        let entry = LayerEntry {
            path: target,
            kind: EntryKind::File { size: bytes.len() as u64, link: None },
            mode,
            uid,
            gid,
            mtime: self.now.0,
            mtime_nsec: self.now.1,
            xattrs: Vec::new(),
        };
        self.put(Planned { entry, content: Some(Content::Inline(bytes)), hash: Some(hash), group: None }, false)
    }

    /// Hardlinks, content hashes, the checksum and the content source.
    fn finish(mut self) -> Result<CopyPlan, CopyError> {
        self.link_groups();
        let mut stack_source = None;
        if let Fs::Stack { stack, store } = self.fs {
            let mut paths: Vec<String> = self
                .out
                .values()
                .filter_map(|p| match &p.content {
                    Some(Content::Stack(src)) => Some(src.path.clone()),
                    _ => None,
                })
                .collect();
            paths.sort();
            paths.dedup();
            if !paths.is_empty() {
                stack_source = Some(stack.spool(store, &paths)?);
            }
        }
        for p in self.out.values_mut() {
            if p.hash.is_some() {
                continue;
            }
            let (len, hash) = match &p.content {
                None => continue,
                Some(Content::Host(root, rel)) => {
                    let mut f = open_in_root(root, rel).map_err(|source| CopyError::Io { path: format!("/{}", p.entry.path), source })?;
                    hash_reader(&mut f)
                }
                Some(Content::Inline(bytes)) => hash_reader(&mut &bytes[..]),
                Some(Content::Stack(src)) => {
                    let source = stack_source.as_mut().expect("spooled above");
                    source.open(src).and_then(|mut r| hash_reader(&mut r))
                }
                Some(Content::Spool { .. }) => unreachable!("spooled content is hashed while spooling"),
            }
            .map_err(|source| CopyError::Io { path: format!("/{}", p.entry.path), source })?;
            if let EntryKind::File { size, .. } = &mut p.entry.kind {
                // The bytes hashed are the bytes the layer gets; a file that
                // changes after this fails the layer write, not silently.
                *size = len;
            }
            p.hash = Some(hash);
        }
        let checksum = checksum(&self.out);
        let mut refs = HashMap::new();
        let mut entries = Vec::with_capacity(self.out.len());
        for (path, p) in self.out {
            if let Some(c) = p.content {
                refs.insert(path, c);
            }
            entries.push(p.entry);
        }
        let contents = PlanContents { refs, spool: self.spool.into_file(), stack: stack_source };
        Ok(CopyPlan { entries, contents: Box::new(contents), checksum })
    }

    /// Files of one hardlink group become one file (the first in byte
    /// order, which holds the bytes) and links to it.
    fn link_groups(&mut self) {
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for (path, p) in &self.out {
            if let (Some(g), EntryKind::File { .. }) = (&p.group, &p.entry.kind) {
                groups.entry(g.clone()).or_default().push(path.clone());
            }
        }
        for (_, members) in groups {
            if members.len() < 2 {
                continue;
            }
            // BTreeMap order is byte order, not layer order: the layer writer
            // re-sorts (kiln_protocol::sort_for_layer) and writes whichever
            // member comes first there as the regular file.
            let head = members[0].clone();
            let content = members.iter().find_map(|m| self.out[m].content.clone());
            let hash = members.iter().find_map(|m| self.out[m].hash);
            let size = match self.out[&head].entry.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            };
            for (i, m) in members.iter().enumerate() {
                let p = self.out.get_mut(m).expect("member of out");
                if i == 0 {
                    p.content = content.clone();
                    p.hash = hash;
                } else {
                    p.entry.kind = EntryKind::File { size, link: Some(head.clone()) };
                    p.content = None;
                    p.hash = None;
                }
            }
        }
    }
}

/// sha256 over every entry's path, type, mode, owner, xattrs and content
/// hash (not mtimes), each field length-prefixed so no two different
/// layers hash alike.
fn checksum(out: &BTreeMap<String, Planned>) -> String {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, b"kiln-copy-v1");
    for p in out.values() {
        let e = &p.entry;
        field(&mut h, e.path.as_bytes());
        let kind = match &e.kind {
            EntryKind::File { size, link } => format!("file {size} {}", link.as_deref().unwrap_or("")),
            EntryKind::Dir { opaque } => format!("dir {opaque}"),
            EntryKind::Symlink { target } => format!("symlink {target}"),
            EntryKind::CharDevice { major, minor } => format!("char {major} {minor}"),
            EntryKind::BlockDevice { major, minor } => format!("block {major} {minor}"),
            EntryKind::Fifo => "fifo".into(),
            EntryKind::Socket => "socket".into(),
            EntryKind::Whiteout => "whiteout".into(),
        };
        field(&mut h, kind.as_bytes());
        field(&mut h, format!("{:o} {} {}", e.mode, e.uid, e.gid).as_bytes());
        for x in &e.xattrs {
            field(&mut h, x.name.as_bytes());
            field(&mut h, &x.value);
        }
        field(&mut h, p.hash.as_ref().map_or(&[][..], |h| &h[..]));
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}
