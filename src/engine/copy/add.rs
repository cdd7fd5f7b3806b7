//! What ADD does beyond COPY: local tar archives (plain, gzip, bzip2, xz,
//! zstd; recognised by their bytes, not their names) become entries whose
//! bytes go to the spool, never onto the host's disk as files; http(s)
//! URLs are downloaded into the spool, checked against `--checksum`.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kiln_protocol::confined_path::{resolve_lexically, Node, Tree};
use kiln_protocol::tar_read::{Kind, TarReader};
use kiln_protocol::{file_name, EntryKind, LayerEntry, Xattr};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::content::{Content, Spool};
use super::{basename, is_dir, join, parent, CopyError, Planned, Planner};

/// An http(s) URL that is not a git repository.
pub(super) fn is_http(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && !is_git(s)
}

/// A git source as BuildKit recognises one: `git@host:repo`, `git://`,
/// `ssh://`, or an http(s) URL whose path ends in `.git`.
pub(crate) fn is_git(s: &str) -> bool {
    if s.starts_with("git@") || s.starts_with("git://") || s.starts_with("ssh://") {
        return true;
    }
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        return false;
    }
    let no_fragment = s.split('#').next().unwrap_or(s);
    let path = no_fragment.split('?').next().unwrap_or(no_fragment);
    path.trim_end_matches('/').ends_with(".git")
}

/// `--checksum=<algorithm>:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExpectedDigest {
    pub algorithm: &'static str,
    pub hex: String,
}

impl ExpectedDigest {
    pub fn parse(s: &str) -> Result<Self, CopyError> {
        let bad = |m: &str| CopyError::Source(format!("ADD --checksum={s}: {m}"));
        let (algo, hex) = s.split_once(':').ok_or_else(|| bad("expected <algorithm>:<hex digest>, e.g. sha256:..."))?;
        let (algorithm, len) = match algo {
            "sha256" => ("sha256", 64),
            "sha384" => ("sha384", 96),
            "sha512" => ("sha512", 128),
            _ => return Err(bad("unsupported digest algorithm (sha256, sha384 or sha512)")),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad(&format!("a {algorithm} digest is {len} lowercase hex digits")));
        }
        Ok(ExpectedDigest { algorithm, hex: hex.to_string() })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArchiveKind {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

fn compression_of(magic: &[u8]) -> ArchiveKind {
    match magic {
        [0x1f, 0x8b, ..] => ArchiveKind::Gzip,
        [b'B', b'Z', b'h', ..] => ArchiveKind::Bzip2,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => ArchiveKind::Xz,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ArchiveKind::Zstd,
        _ => ArchiveKind::Tar,
    }
}

pub(crate) fn decompress<'r>(kind: ArchiveKind, r: Box<dyn Read + 'r>) -> io::Result<Box<dyn Read + 'r>> {
    Ok(match kind {
        ArchiveKind::Tar => r,
        ArchiveKind::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        ArchiveKind::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        ArchiveKind::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(r)),
        ArchiveKind::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Reads up to `buf.len()` bytes (fewer only at the end).
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether `block` is a tar header: the `ustar` magic or, for old v7
/// archives, a valid header checksum.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 || block.iter().all(|b| *b == 0) {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = std::str::from_utf8(&block[148..156]).unwrap_or("");
    let Ok(stored) = u32::from_str_radix(field.trim_matches(|c: char| c == ' ' || c == '\0'), 8) else {
        return false;
    };
    let sum: u32 = block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u32 }).sum();
    stored == sum
}

/// The archive kind of `r`'s bytes, if they are a (compressed) tar archive.
fn sniff(mut open: impl FnMut() -> io::Result<Box<dyn Read>>) -> io::Result<Option<ArchiveKind>> {
    let mut magic = [0u8; 6];
    let n = read_full(&mut open()?, &mut magic)?;
    let kind = compression_of(&magic[..n]);
    let mut block = [0u8; 512];
    // A file that merely starts with compression magic is not an archive: copy it.
    let got = match decompress(kind, open()?) {
        Ok(mut r) => read_full(&mut r, &mut block).unwrap_or(0),
        Err(_) => 0,
    };
    Ok(is_tar_header(&block[..got]).then_some(kind))
}

/// The archive kind of a stream that starts with `head` (a few KiB of it).
pub(crate) fn sniff_head(head: &[u8]) -> Option<ArchiveKind> {
    sniff(|| Ok(Box::new(io::Cursor::new(head.to_vec())) as Box<dyn Read>)).ok().flatten()
}

/// The archive kind of a spooled download, if it is one.
pub(crate) fn sniff_download(file: &std::fs::File) -> io::Result<Option<ArchiveKind>> {
    let kind = sniff_spooled(file.try_clone()?)?;
    // The clones share the file offset: rewind after sniffing.
    file.try_clone()?.seek(SeekFrom::Start(0))?;
    Ok(kind)
}

/// GETs `url` into a private unnamed temp file, read from its start.
pub(crate) fn download_to_file(url: &str, cancel: &AtomicBool) -> Result<std::fs::File, CopyError> {
    let mut spool = Spool::default();
    download(url, &mut spool, None, cancel)?;
    spool.into_reader().map_err(|e| CopyError::Download { url: url.to_string(), message: e.to_string() })
}

/// The archive kind of the context file `rel`, if it is one.
pub(super) fn sniff_file(root: &Path, rel: &str) -> io::Result<Option<ArchiveKind>> {
    sniff(|| Ok(Box::new(crate::engine::context::open_in_root(root, rel)?) as Box<dyn Read>))
}

/// An archive member's path, relative and clean; `None` for the root
/// itself; an error for anything that would climb out of the destination.
pub(crate) fn member_path(raw: &str, archive: &str) -> Result<Option<String>, CopyError> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(CopyError::Archive {
                    archive: archive.to_string(),
                    message: format!("the entry {raw:?} points outside the destination"),
                })
            }
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// What the archive's members so far and the stage below hold.
impl Tree for Planner<'_> {
    fn node(&self, rel: &Path) -> io::Result<Node> {
        let here = &crate::engine::slash_path(rel);
        let kind = match self.out.get(here) {
            Some(p) => Some(&p.entry.kind),
            None => self.input.dest_root.entry(here).map(|e| &e.kind),
        };
        Ok(Node::of_entry(kind))
    }
}

impl Planner<'_> {
    /// Where the archive member `rel` lands below `dest`: its parent with
    /// the symlinks planned so far or present in the stage resolved,
    /// confined to the root.
    fn member_target(&self, dest: &str, rel: &str) -> Result<String, CopyError> {
        let dir = if parent(rel).is_empty() { dest.to_string() } else { join(dest, parent(rel)) };
        // Nothing there yet: the rest is created as written.
        let resolved = resolve_lexically(self, &dir).map_err(|e| self.dest_err(format!("{e} below /{dest} for {rel}")))?;
        Ok(join(&crate::engine::slash_path(&resolved), basename(rel)))
    }

    /// Adds the members of a tar archive below `dest` (already a directory).
    pub(super) fn extract(&mut self, kind: ArchiveKind, file: Box<dyn Read>, archive: &str, dest: &str) -> Result<(), CopyError> {
        let arch_err = |message: String| CopyError::Archive { archive: archive.to_string(), message };
        let io_err = |e: io::Error| arch_err(e.to_string());
        // A member that cannot be placed (a symlink loop on its way) is the archive's fault.
        let in_archive = |e: CopyError| match e {
            CopyError::Dest { message, .. } => arch_err(message),
            e => e,
        };
        let mut ar = TarReader::new(decompress(kind, file).map_err(io_err)?);
        // Group keys of the regular files seen so far, for hardlinks.
        let mut files: HashMap<String, (String, u64)> = HashMap::new();
        while let Some(member) = ar.next_member().map_err(io_err)? {
            let raw = file_name::from_bytes(&member.path).into_owned();
            let Some(rel) = member_path(&raw, archive)? else { continue };
            // Docker's untar writes through symlinks already on the way
            // (e.g. `lib -> usr/lib` on a usrmerged base), inside the root.
            let target = self.member_target(dest, &rel).map_err(in_archive)?;
            let name = basename(&rel);
            // Whiteouts act in the layer exactly as Docker's untar applies them.
            if name == ".wh..wh..opq" {
                if let Some(p) = self.out.get_mut(parent(&target)) {
                    if let EntryKind::Dir { opaque } = &mut p.entry.kind {
                        *opaque = true;
                    }
                }
                continue;
            }
            self.ensure_dir(parent(&target))?;
            let id = |n: u64, what: &str| u32::try_from(n).map_err(|_| arch_err(format!("{raw}: {what} {n} is out of range")));
            let (uid, gid) = self.owner_of(id(member.uid, "uid")?, id(member.gid, "gid")?);
            let xattrs = member.xattrs.iter().map(|(name, value)| Xattr { name: name.clone(), value: value.clone() }).collect();
            let mut entry = LayerEntry {
                path: target.clone(),
                kind: EntryKind::Dir { opaque: false },
                mode: member.mode,
                uid,
                gid,
                mtime: member.mtime,
                mtime_nsec: 0,
                xattrs,
            };
            let mut content = None;
            let mut hash = None;
            let mut group = None;
            if let Some(hidden) = name.strip_prefix(".wh.") {
                entry.path = join(parent(&target), hidden);
                entry.kind = EntryKind::Whiteout;
                self.put(Planned { entry, content, hash, group }, true)?;
                continue;
            }
            let link = file_name::from_bytes(&member.link);
            entry.kind = match member.kind {
                Kind::File => {
                    let (c, len, h) = self.spool.append(&mut ar).map_err(io_err)?;
                    content = Some(c);
                    hash = Some(h);
                    group = Some(format!("a:{target}"));
                    files.insert(target.clone(), (format!("a:{target}"), len));
                    EntryKind::File { size: len, link: None }
                }
                Kind::HardLink => {
                    if link.is_empty() {
                        return Err(arch_err(format!("{raw}: a hardlink without a target")));
                    }
                    let to = match member_path(&link, archive)? {
                        Some(l) => self.member_target(dest, &l).map_err(in_archive)?,
                        None => String::new(),
                    };
                    let (g, size) = files
                        .get(&to)
                        .cloned()
                        .ok_or_else(|| arch_err(format!("{raw}: hardlink to {link}, which is not an earlier file of the archive")))?;
                    let target_planned = self.out.get(&to);
                    content = target_planned.and_then(|p| p.content.clone());
                    hash = target_planned.and_then(|p| p.hash);
                    files.insert(target.clone(), (g.clone(), size));
                    group = Some(g);
                    EntryKind::File { size, link: None }
                }
                Kind::Symlink => {
                    if link.is_empty() {
                        return Err(arch_err(format!("{raw}: a symlink without a target")));
                    }
                    EntryKind::Symlink { target: link.to_string() }
                }
                Kind::Dir => EntryKind::Dir { opaque: false },
                Kind::CharDevice => EntryKind::CharDevice { major: member.dev.0, minor: member.dev.1 },
                Kind::BlockDevice => EntryKind::BlockDevice { major: member.dev.0, minor: member.dev.1 },
                Kind::Fifo => EntryKind::Fifo,
                // Other kinds (volume labels, multi-volume parts) carry no file.
                Kind::Other(_) => continue,
            };
            // An archive's directory over an existing directory merges into it.
            if is_dir(&entry) && self.existing(&target) == Some(true) && !self.out.contains_key(&target) {
                self.out.insert(target.clone(), Planned { entry, content: None, hash: None, group: None });
                continue;
            }
            self.put(Planned { entry, content, hash, group }, true)?;
        }
        // The compressed stream's checksum is only checked at its end.
        ar.finish().map(drop).map_err(io_err)
    }

    /// ADD <url>: the download becomes a 0600 file (mtime from
    /// Last-Modified), or with `--unpack=true` an archive unpacked at dest.
    pub(super) fn url(&mut self, url: &str) -> Result<(), CopyError> {
        let expected = self.input.checksum.map(ExpectedDigest::parse).transpose()?;
        let unpack = self.input.unpack == Some(true);
        let mut local = Spool::default();
        let spool = if unpack { &mut local } else { &mut self.spool };
        let offset = spool.offset();
        let got = download(url, spool, expected.as_ref(), self.input.cancel)?;
        if let Some(exp) = &expected {
            if got.expected_hex.as_deref() != Some(exp.hex.as_str()) {
                return Err(CopyError::ChecksumMismatch {
                    url: url.to_string(),
                    expected: format!("{}:{}", exp.algorithm, exp.hex),
                    actual: format!("{}:{}", exp.algorithm, got.expected_hex.unwrap_or_default()),
                });
            }
        }
        let dest = self.dest.rel.clone();
        if unpack {
            let dl_err = |e: io::Error| CopyError::Download { url: url.to_string(), message: e.to_string() };
            let mut file = local.into_reader().map_err(dl_err)?;
            let kind = sniff_spooled(file.try_clone().map_err(dl_err)?).map_err(dl_err)?;
            // The clones share the file offset: rewind after sniffing.
            file.seek(SeekFrom::Start(0)).map_err(dl_err)?;
            if let Some(kind) = kind {
                self.ensure_dir(&dest)?;
                return self.extract(kind, Box::new(file), url, &dest);
            }
            // Not an archive after all: copy it as a file from the private spool.
            let (c, len, h) = self.spool.append(&mut file).map_err(dl_err)?;
            return self.place_download(url, c, len, h, got.last_modified);
        }
        let content = self.spool.since(offset);
        self.place_download(url, content, got.len, got.sha256, got.last_modified)
    }

    fn place_download(
        &mut self,
        url: &str,
        content: Content,
        len: u64,
        sha256: [u8; 32],
        last_modified: Option<i64>,
    ) -> Result<(), CopyError> {
        let dest = self.dest.rel.clone();
        let target = if self.dest_is_dir() {
            self.ensure_dir(&dest)?;
            join(&dest, &url_file_name(url))
        } else {
            dest
        };
        self.ensure_dir(parent(&target))?;
        let (uid, gid) = self.owner_of(0, 0);
        let mode = self.chmod.as_ref().map_or(0o600, |c| c.apply(0o600, false));
        let (mtime, mtime_nsec) = last_modified.map_or(self.now, |t| (t, 0));
        let entry = LayerEntry {
            path: target,
            kind: EntryKind::File { size: len, link: None },
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            xattrs: Vec::new(),
        };
        self.put(Planned { entry, content: Some(content), hash: Some(sha256), group: None }, false)
    }
}

/// Sniffs a spooled download (the file is read from its start).
fn sniff_spooled(file: std::fs::File) -> io::Result<Option<ArchiveKind>> {
    let file = std::cell::RefCell::new(file);
    sniff(|| {
        let mut f = file.borrow().try_clone()?;
        f.seek(SeekFrom::Start(0))?;
        Ok(Box::new(f) as Box<dyn Read>)
    })
}

/// The file name BuildKit gives a download: the URL path's last element,
/// or `__unnamed__`.
fn url_file_name(url: &str) -> String {
    let no_fragment = url.split('#').next().unwrap_or(url);
    let no_query = no_fragment.split('?').next().unwrap_or(no_fragment);
    let after_scheme = no_query.split_once("://").map(|(_, r)| r).unwrap_or(no_query);
    let path = after_scheme.split_once('/').map(|(_, p)| p).unwrap_or("");
    let base = percent_decode(path.trim_end_matches('/').rsplit('/').next().unwrap_or(""));
    if base.is_empty() || base == "." || base == ".." || base.contains('/') {
        "__unnamed__".to_string()
    } else {
        base
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Downloaded {
    len: u64,
    sha256: [u8; 32],
    /// The hex digest in `--checksum`'s algorithm, when one was given.
    expected_hex: Option<String>,
    last_modified: Option<i64>,
}

enum Hasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

/// GETs `url` into `spool`, on a thread of its own so it works from inside
/// or outside an async runtime.
fn download(url: &str, spool: &mut Spool, expected: Option<&ExpectedDigest>, cancel: &AtomicBool) -> Result<Downloaded, CopyError> {
    let fail = |message: String| CopyError::Download { url: url.to_string(), message };
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| fail(e.to_string()))?;
            let fetch = async {
                let client = reqwest::Client::builder()
                    .use_rustls_tls()
                    .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(30))
                    .read_timeout(Duration::from_secs(120))
                    .redirect(reqwest::redirect::Policy::limited(10))
                    .build()
                    .map_err(|e| fail(crate::registry::client::error_chain(&e)))?;
                let mut resp = client.get(url).send().await.map_err(|e| fail(crate::registry::client::error_chain(&e)))?;
                if !resp.status().is_success() {
                    return Err(fail(format!("the server answered {}", resp.status())));
                }
                let last_modified = resp
                    .headers()
                    .get(reqwest::header::LAST_MODIFIED)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_http_date);
                let mut sha256 = Sha256::new();
                let mut other = expected.map(|e| match e.algorithm {
                    "sha384" => Hasher::Sha384(Sha384::new()),
                    "sha512" => Hasher::Sha512(Sha512::new()),
                    _ => Hasher::Sha256(Sha256::new()),
                });
                let mut len = 0u64;
                while let Some(chunk) = resp.chunk().await.map_err(|e| fail(crate::registry::client::error_chain(&e)))? {
                    sha256.update(&chunk);
                    match &mut other {
                        Some(Hasher::Sha256(h)) => h.update(&chunk),
                        Some(Hasher::Sha384(h)) => h.update(&chunk),
                        Some(Hasher::Sha512(h)) => h.update(&chunk),
                        None => {}
                    }
                    spool.write(&chunk).map_err(|e| fail(format!("spooling the download: {e}")))?;
                    len += chunk.len() as u64;
                }
                let expected_hex = other.map(|h| match h {
                    Hasher::Sha256(h) => hex::encode(h.finalize()),
                    Hasher::Sha384(h) => hex::encode(h.finalize()),
                    Hasher::Sha512(h) => hex::encode(h.finalize()),
                });
                Ok(Downloaded { len, sha256: sha256.finalize().into(), expected_hex, last_modified })
            };
            crate::cancel::block_on(&rt, cancel, fetch).map_err(|e| fail(e.to_string()))?
        })
        .join()
        .unwrap_or_else(|_| Err(fail("the download thread panicked".into())))
    })
}

/// An HTTP date in the preferred IMF-fixdate form (`Sun, 06 Nov 1994
/// 08:49:37 GMT`) as seconds since the epoch.
pub(super) fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let day: i64 = day.parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m == month)? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else { return None };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_kinds_and_names() {
        assert!(is_http("https://example.com/a.tar.gz") && !is_git("https://example.com/a.tar.gz"));
        assert!(is_git("https://github.com/o/r.git#main") && !is_http("https://github.com/o/r.git"));
        assert!(is_git("git@github.com:o/r.git") && is_git("git://h/r"));
        assert!(!is_http("ftp://x/y") && !is_http("local/file"));
        assert_eq!(url_file_name("https://h/dir/file%20name.txt?x=1#f"), "file name.txt");
        assert_eq!(url_file_name("https://h/"), "__unnamed__");
        assert_eq!(url_file_name("https://h"), "__unnamed__");
    }

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951825600));
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn checksum_flag_syntax() {
        let hex = "a".repeat(64);
        assert_eq!(ExpectedDigest::parse(&format!("sha256:{hex}")).unwrap().hex, hex);
        assert!(ExpectedDigest::parse("sha256:abc").is_err());
        assert!(ExpectedDigest::parse(&format!("md5:{hex}")).is_err());
        assert!(ExpectedDigest::parse(&hex).is_err());
    }

    #[test]
    fn archive_paths_never_climb() {
        assert_eq!(member_path("./a//b/", "x").unwrap(), Some("a/b".into()));
        assert_eq!(member_path("/etc/passwd", "x").unwrap(), Some("etc/passwd".into()));
        assert_eq!(member_path("./", "x").unwrap(), None);
        assert!(member_path("a/../../b", "x").is_err());
    }
}
