//! The USTAR/PAX encoder: 512-byte USTAR headers written by hand, a PAX
//! extended header before an entry only when a value does not fit (long or
//! non-ASCII names, xattrs as `SCHILY.xattr.<name>`, large sizes or ids),
//! numeric owners with empty user and group names, file bodies streamed
//! and padded to a block, and two zero blocks at the end, as Go's
//! archive/tar writes them. It encodes what it is given; what goes in a
//! layer is the planner's business.

use std::io::{self, Read, Write};

use kiln_protocol::{file_name, Xattr};

const BLOCK: usize = 512;
const OCTAL_7: u64 = 0o7777777;
const OCTAL_11: u64 = 0o77777777777;

/// One tar header, before encoding.
pub struct Header<'a> {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    /// The USTAR type flag (`b'0'` file, `b'5'` directory, ...).
    pub kind: u8,
    pub link: &'a str,
    /// Device numbers, written for character and block devices only.
    pub dev: (u32, u32),
    pub xattrs: &'a [Xattr],
}

/// Why a file body could not be written.
pub enum BodyError {
    Io(io::Error),
    /// The content had `actual` bytes, not the size the header announced.
    Size { actual: u64 },
}

/// Writes headers and bodies to `out`, streaming bodies through one reusable buffer.
pub struct TarEncoder<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> TarEncoder<W> {
    pub fn new(out: W) -> Self {
        Self { out, buf: vec![0; 1 << 17] }
    }

    /// Copies exactly `size` bytes from `reader`, then pads to a block.
    pub fn body(&mut self, mut reader: Box<dyn Read + '_>, size: u64) -> Result<(), BodyError> {
        let mut left = size;
        loop {
            // Ask for one byte more than expected so a longer content is noticed.
            let want = (left + 1).min(self.buf.len() as u64) as usize;
            let n = match reader.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BodyError::Io(e)),
            };
            if n as u64 > left {
                let mut extra = n as u64 - left;
                extra += io::copy(&mut reader, &mut io::sink()).map_err(BodyError::Io)?;
                return Err(BodyError::Size { actual: size + extra });
            }
            self.out.write_all(&self.buf[..n]).map_err(BodyError::Io)?;
            left -= n as u64;
        }
        if left > 0 {
            return Err(BodyError::Size { actual: size - left });
        }
        self.pad(size).map_err(BodyError::Io)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes `h`, after a PAX extended header when a value does not fit USTAR.
    pub fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (name, prefix) = match split_ustar_path(&h.path) {
            Some(split) => split,
            None => {
                // Raw bytes, as Go writes them: a name need not be UTF-8.
                pax.push(("path".into(), file_name::to_bytes(&h.path).into_owned()));
                (truncate(&h.path, 100), "")
            }
        };
        let link = if h.link.len() > 100 || !h.link.is_ascii() {
            pax.push(("linkpath".into(), file_name::to_bytes(h.link).into_owned()));
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
            let fields = UstarFields { mode: 0o644, uid: 0, gid: 0, size: body.len() as u64, mtime, kind: b'x', link: "", dev: (0, 0), prefix: "" };
            fields.write(&mut ph);
            self.out.write_all(&ph)?;
            self.out.write_all(&body)?;
            self.pad(body.len() as u64)?;
        }
        let mut block = [0u8; BLOCK];
        put_bytes(&mut block[0..100], name.as_bytes());
        let dev = if matches!(h.kind, b'3' | b'4') { h.dev } else { (0, 0) };
        UstarFields { mode: h.mode as u64, uid, gid, size, mtime, kind: h.kind, link, dev, prefix }.write(&mut block);
        self.out.write_all(&block)
    }

    /// Writes the end-of-archive blocks and hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
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

/// The numeric and link fields of one USTAR header block (values that
/// do not fit went to a PAX record and are 0 here).
struct UstarFields<'a> {
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    kind: u8,
    link: &'a str,
    dev: (u32, u32),
    prefix: &'a str,
}

impl UstarFields<'_> {
    /// Fills `b` (whose name field is already set) and its checksum.
    fn write(&self, b: &mut [u8; BLOCK]) {
        put_octal(&mut b[100..108], self.mode);
        put_octal(&mut b[108..116], self.uid);
        put_octal(&mut b[116..124], self.gid);
        put_octal(&mut b[124..136], self.size);
        put_octal(&mut b[136..148], self.mtime);
        b[156] = self.kind;
        put_bytes(&mut b[157..257], self.link.as_bytes());
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        // uname/gname stay empty: owners are numeric.
        put_octal(&mut b[329..337], (self.dev.0 as u64).min(OCTAL_7));
        put_octal(&mut b[337..345], (self.dev.1 as u64).min(OCTAL_7));
        put_bytes(&mut b[345..500], self.prefix.as_bytes());
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| x as u64).sum();
        put_octal(&mut b[148..155], sum);
        b[155] = b' ';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
