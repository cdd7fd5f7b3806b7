//! The streaming reader of layer tars that every part of kiln uses: the
//! host indexes layers with it (each member's metadata and the offset of its
//! bytes in the stream) and the guest agent unpacks layers with it.
//!
//! Written here rather than taken from the `tar` crate because that crate
//! splits PAX records at newlines, so a binary xattr value containing 0x0a
//! (e.g. some `security.capability` sets) makes it drop the uid, gid, size
//! and path records that follow. PAX records are length-prefixed; this
//! reader honours that. It understands USTAR, GNU (long names, base-256
//! numbers) and PAX local headers; global PAX headers are ignored.

use std::collections::HashMap;
use std::io::{self, Read};

const BLOCK: u64 = 512;
/// PAX and GNU long-name members larger than this are refused, not buffered.
const MAX_META: u64 = 64 << 20;
/// How much of what follows the end-of-archive blocks [`TarReader::finish`]
/// reads: tar pads to 10 KiB records, and this is enough to reach a
/// compressed stream's end and checksum, while a bomb hidden after the end
/// (gigabytes of zeros in a few megabytes of gzip) costs nothing.
pub const MAX_TRAILER: u64 = 1 << 20;

/// What a member is, from its type flag. Every reader in kiln matches on
/// this instead of on raw type bytes, so that they all read an archive alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`, `7` (contiguous), and the pre-POSIX `\0` unless its name ends in `/`.
    File,
    /// `1`: `link` names an earlier member.
    HardLink,
    /// `2`: `link` is the target, as written.
    Symlink,
    /// `3`
    CharDevice,
    /// `4`
    BlockDevice,
    /// `5`, and a pre-POSIX `\0` member whose name ends in `/` (as Go's
    /// archive/tar and GNU tar read such old archives).
    Dir,
    /// `6`
    Fifo,
    /// Any other flag: no file system object (GNU volume labels,
    /// multi-volume continuations, vendor types). The byte is kept for errors.
    Other(u8),
}

impl Kind {
    fn of(flag: u8, path: &[u8]) -> Self {
        match flag {
            b'\0' if path.ends_with(b"/") => Kind::Dir,
            b'0' | b'\0' | b'7' => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        }
    }
}

/// One member, with PAX and GNU long-name headers already applied.
#[derive(Debug, Clone)]
pub struct Member {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub size: u64,
    pub dev: (u32, u32),
    /// `SCHILY.xattr.*` records, in archive order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Where the member's bytes start in the uncompressed stream.
    pub offset: u64,
}

pub struct TarReader<R> {
    r: R,
    pos: u64,
    /// Data and padding of the previous member still to skip.
    pending: u64,
    /// Data of the current member not yet read through `Read`.
    data_left: u64,
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// An octal field, or a GNU base-256 one (high bit of the first byte set).
fn number(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err(bad("negative base-256 number in a tar header"));
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256).ok_or_else(|| bad("base-256 number overflows"))? + b as u64;
        }
        return Ok(v);
    }
    let text = cstr(field);
    let text = std::str::from_utf8(text).map_err(|_| bad("non-ASCII number in a tar header"))?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| bad(format!("bad octal number {text:?} in a tar header")))
}

/// Parses PAX records: `<len> <key>=<value>\n`, `len` counting the whole record.
fn pax_records(mut data: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let space = data.iter().position(|&b| b == b' ').ok_or_else(|| bad("malformed PAX record"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("malformed PAX record length"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("malformed PAX record"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(|| bad("PAX record without '='"))?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        out.push((key, record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

impl<R: Read> TarReader<R> {
    pub fn new(r: R) -> Self {
        Self { r, pos: 0, pending: 0, data_left: 0 }
    }

    /// Once `next_member` returned `None`: reads on through what follows the
    /// archive's end, at most [`MAX_TRAILER`] bytes, so that a decompressor
    /// underneath reaches its end and verifies its checksum. Like Docker,
    /// kiln ignores what follows the end; it only has to decompress correctly.
    pub fn finish(self) -> io::Result<R> {
        let mut r = self.r;
        io::copy(&mut (&mut r).take(MAX_TRAILER), &mut io::sink())?;
        Ok(r)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += got;
        if got != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tar ends inside a member"));
        }
        Ok(())
    }

    /// Reads one header block; None at a clean end (zero block or EOF).
    fn block(&mut self) -> io::Result<Option<[u8; 512]>> {
        let mut b = [0u8; 512];
        let mut filled = 0;
        while filled < b.len() {
            match self.r.read(&mut b[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tar ends inside a header")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += BLOCK;
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let stored = number(&b[148..156])?;
        let unsigned: u64 = b.iter().enumerate().map(|(i, &x)| if (148..156).contains(&i) { 32 } else { x as u64 }).sum();
        let signed: i64 = b.iter().enumerate().map(|(i, &x)| if (148..156).contains(&i) { 32 } else { x as i8 as i64 }).sum();
        if stored != unsigned && stored as i64 != signed {
            return Err(bad(format!("tar header checksum mismatch at offset {}", self.pos - BLOCK)));
        }
        Ok(Some(b))
    }

    fn body(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > MAX_META {
            return Err(bad(format!("a {size}-byte tar extension header is too large")));
        }
        let mut v = Vec::with_capacity(size as usize);
        (&mut self.r).take(size).read_to_end(&mut v)?;
        self.pos += v.len() as u64;
        if v.len() as u64 != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tar ends inside a member"));
        }
        self.skip(padding(size))?;
        Ok(v)
    }

    /// The next member; the previous member's unread bytes are skipped.
    pub fn next_member(&mut self) -> io::Result<Option<Member>> {
        let pending = std::mem::take(&mut self.pending);
        self.data_left = 0;
        self.skip(pending)?;
        let mut pax: HashMap<String, Vec<u8>> = HashMap::new();
        let mut xattrs = Vec::new();
        let mut long_name = None;
        let mut long_link = None;
        loop {
            let Some(h) = self.block()? else {
                if !pax.is_empty() || long_name.is_some() || long_link.is_some() {
                    return Err(bad("the tar ends after an extension header"));
                }
                return Ok(None);
            };
            let kind = h[156];
            let size = number(&h[124..136])?;
            match kind {
                b'x' => {
                    for (k, v) in pax_records(&self.body(size)?)? {
                        match k.strip_prefix("SCHILY.xattr.") {
                            Some(name) => xattrs.push((name.to_string(), v)),
                            None => {
                                pax.insert(k, v);
                            }
                        }
                    }
                    continue;
                }
                b'g' => {
                    self.body(size)?;
                    continue;
                }
                b'L' => {
                    long_name = Some(cstr(&self.body(size)?).to_vec());
                    continue;
                }
                b'K' => {
                    long_link = Some(cstr(&self.body(size)?).to_vec());
                    continue;
                }
                b'S' => return Err(bad("GNU sparse files are not supported")),
                _ => {}
            }
            // PAX-encoded sparse files (GNU tar --sparse --format=pax) would
            // otherwise read as a file holding the sparse map.
            if pax.keys().any(|k| k.starts_with("GNU.sparse.")) {
                return Err(bad("GNU sparse files are not supported"));
            }
            let ustar = &h[257..263] == b"ustar\0";
            let path = match (pax.remove("path"), long_name.take()) {
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) => {
                    let name = cstr(&h[0..100]);
                    let prefix = if ustar { cstr(&h[345..500]) } else { &[][..] };
                    if prefix.is_empty() { name.to_vec() } else { [prefix, b"/", name].concat() }
                }
            };
            let link = match (pax.remove("linkpath"), long_link.take()) {
                (Some(l), _) | (None, Some(l)) => l,
                (None, None) => cstr(&h[157..257]).to_vec(),
            };
            let pax_num = |key: &str| -> Option<io::Result<i64>> {
                pax.get(key).map(|v| {
                    let s = std::str::from_utf8(v).map_err(|_| bad(format!("PAX {key} is not a number")))?;
                    // mtime may carry a fraction: only seconds are kept.
                    s.split('.').next().unwrap_or("").parse::<i64>().map_err(|_| bad(format!("PAX {key} {s:?} is not a number")))
                })
            };
            let size = match pax_num("size") {
                Some(s) => s? as u64,
                None => size,
            };
            let uid = match pax_num("uid") {
                Some(v) => v? as u64,
                None => number(&h[108..116])?,
            };
            let gid = match pax_num("gid") {
                Some(v) => v? as u64,
                None => number(&h[116..124])?,
            };
            let mtime = match pax_num("mtime") {
                Some(v) => v?,
                None => number(&h[136..148])? as i64,
            };
            let dev = if matches!(kind, b'3' | b'4') {
                (number(&h[329..337])? as u32, number(&h[337..345])? as u32)
            } else {
                (0, 0)
            };
            // Only regular files carry data in practice; a hardlink's size is skipped too.
            let member = Member {
                kind: Kind::of(kind, &path),
                path,
                link,
                mode: (number(&h[100..108])? & 0o7777) as u32,
                uid,
                gid,
                mtime,
                size,
                dev,
                xattrs,
                offset: self.pos,
            };
            self.pending = size + padding(size);
            self.data_left = size;
            return Ok(Some(member));
        }
    }
}

/// Reads the current member's data (what [`TarReader::next_member`]
/// returned last); the rest is skipped by the next call.
impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tar ends inside a member"));
        }
        self.data_left -= n as u64;
        self.pending -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_values_may_contain_newlines() {
        let mut data = Vec::new();
        data.extend_from_slice(b"24 SCHILY.xattr.a=\n\x01\x0a\x02\n\n");
        let recs = pax_records(&data).unwrap();
        assert_eq!(recs, [("SCHILY.xattr.a".to_string(), b"\n\x01\x0a\x02\n".to_vec())]);
        assert!(pax_records(b"99 path=x\n").is_err());
    }

    #[test]
    fn gnu_long_names_and_base_256_ids() {
        let long = format!("{}/{}", "a".repeat(90), "b".repeat(90));
        let target = "t".repeat(160);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_uid(0o7777777 + 5); // written base-256 by the tar crate
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", &target).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut r = TarReader::new(&bytes[..]);
        let m = r.next_member().unwrap().unwrap();
        assert_eq!((m.path, m.size, m.uid, m.kind), (long.into_bytes(), 3, 0o7777777 + 5, Kind::File));
        assert_eq!(&bytes[m.offset as usize..m.offset as usize + 3], b"abc");
        let m = r.next_member().unwrap().unwrap();
        assert_eq!((m.path, m.link, m.kind), (b"link".to_vec(), target.into_bytes(), Kind::Symlink));
        assert!(r.next_member().unwrap().is_none());
    }

    #[test]
    fn corrupt_or_truncated_tars_are_errors() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(600);
        b.append_data(&mut h, "f", &[7u8; 600][..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut bad = bytes.clone();
        bad[0] ^= 1; // checksum no longer matches
        assert!(TarReader::new(&bad[..]).next_member().is_err());
        let cut = &bytes[..512 + 100];
        let mut r = TarReader::new(cut);
        r.next_member().unwrap();
        assert!(r.next_member().is_err(), "a member cut short is an error");
    }

    #[test]
    fn sparse_members_are_refused_in_both_encodings() {
        let mut gnu = [0u8; 512];
        gnu[..6].copy_from_slice(b"sparse");
        gnu[100..107].copy_from_slice(b"0000644");
        gnu[124..135].copy_from_slice(b"00000000000");
        gnu[156] = b'S';
        gnu[257..265].copy_from_slice(b"ustar  \0");
        gnu[148..156].copy_from_slice(b"        ");
        let sum: u32 = gnu.iter().map(|&b| b as u32).sum();
        gnu[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let err = TarReader::new(&gnu[..]).next_member().unwrap_err();
        assert!(err.to_string().contains("sparse"), "{err}");

        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("GNU.sparse.major", &b"1"[..]), ("GNU.sparse.realsize", &b"1099511627776"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        b.append_data(&mut h, "GNUSparseFile.0/f", &b"1\n0"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let err = TarReader::new(&bytes[..]).next_member().unwrap_err();
        assert!(err.to_string().contains("sparse"), "{err}");
    }

    /// Hand-made pre-POSIX (v7) header: no magic, type flag `\0`.
    fn v7_member(name: &str, size: u64) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000755");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut out = h.to_vec();
        out.resize(512 + size.div_ceil(512) as usize * 512, 0);
        out
    }

    #[test]
    fn every_type_flag_reads_as_one_kind() {
        // A pre-POSIX regular member whose name ends in '/' is a directory, as
        // Go's archive/tar reads it; without the slash it is a file.
        let mut bytes = [v7_member("old/", 0), v7_member("old/file", 3)].concat();
        bytes.extend_from_slice(&[0u8; 1024]);
        let mut r = TarReader::new(&bytes[..]);
        assert_eq!(r.next_member().unwrap().unwrap().kind, Kind::Dir);
        let m = r.next_member().unwrap().unwrap();
        assert_eq!((m.kind, m.size), (Kind::File, 3));
        assert!(r.next_member().unwrap().is_none());
        for (flag, kind) in [
            (b'0', Kind::File),
            (b'7', Kind::File),
            (b'1', Kind::HardLink),
            (b'2', Kind::Symlink),
            (b'3', Kind::CharDevice),
            (b'4', Kind::BlockDevice),
            (b'5', Kind::Dir),
            (b'6', Kind::Fifo),
            (b'V', Kind::Other(b'V')),
        ] {
            assert_eq!(Kind::of(flag, b"name/"), kind, "flag {:?}", flag as char);
        }
    }

    #[test]
    fn finishing_reads_a_bounded_trailer() {
        struct Counted<R>(R, u64);
        impl<R: Read> Read for Counted<R> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        let archive = b.into_inner().unwrap();
        // A short trailer is read to its end; of 16 GiB after the end, only
        // MAX_TRAILER bytes past the first end-of-archive block are read.
        let first_end_block = archive.len() as u64 - 512;
        for (trailer, want) in [(3000u64, archive.len() as u64 + 3000), (16 << 30, first_end_block + MAX_TRAILER)] {
            let input = Counted(archive.as_slice().chain(io::repeat(0).take(trailer)), 0);
            let mut r = TarReader::new(input);
            while r.next_member().unwrap().is_some() {}
            let input = r.finish().unwrap();
            assert_eq!(input.1, want, "bytes read with a {trailer}-byte trailer");
        }
    }

    #[test]
    fn numbers_octal_and_base_256() {
        assert_eq!(number(b"0000644\0").unwrap(), 0o644);
        assert_eq!(number(b"   644 \0").unwrap(), 0o644);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert!(number(b"99\0").is_err());
    }
}
