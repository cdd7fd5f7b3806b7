//! File names as kiln carries them: Linux names are bytes, while layer
//! manifests are JSON and kiln splits, sorts and matches paths as text. A
//! name that is not UTF-8 (`caf\xe9`, written by a Latin-1 tool) must still
//! reach the layer unchanged, as it does with Docker.
//!
//! So the mapping is lossless and one-to-one: UTF-8 passes as it is, and
//! each byte that is not part of valid UTF-8 becomes the plane-16
//! private-use character U+10FF00 + byte. So that no real name can collide
//! with an encoded one, a name's own U+10FF00..U+10FFFF characters are
//! carried byte by byte in the same way. Names are converted where they meet
//! a file system or an archive (the context walk, tar members, the guest's
//! snapshot, the layer writer, local exports), and nowhere else.

use std::borrow::Cow;

const BASE: u32 = 0x10_ff00;

fn escape(byte: u8, out: &mut String) {
    out.push(char::from_u32(BASE + byte as u32).expect("U+10FF00..U+10FFFF are chars"));
}

fn is_escape(c: char) -> bool {
    c as u32 >= BASE
}

/// The name `bytes` as kiln carries it.
pub fn from_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.chars().any(is_escape) {
            return Cow::Borrowed(text);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_escape(c) {
                c.encode_utf8(&mut [0; 4]).bytes().for_each(|b| escape(b, &mut out));
            } else {
                out.push(c);
            }
        }
        chunk.invalid().iter().for_each(|&b| escape(b, &mut out));
    }
    Cow::Owned(out)
}

/// The bytes of a name that [`from_bytes`] made.
pub fn to_bytes(name: &str) -> Cow<'_, [u8]> {
    if !name.chars().any(is_escape) {
        return Cow::Borrowed(name.as_bytes());
    }
    let mut out = Vec::with_capacity(name.len());
    for c in name.chars() {
        if is_escape(c) {
            out.push((c as u32 - BASE) as u8);
        } else {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// A host file name as kiln carries it. Unix names are bytes; elsewhere a
/// name is Unicode, and the rare one that is not (unpaired UTF-16
/// surrogates on Windows) is `None`.
#[cfg(unix)]
pub fn from_os(name: &std::ffi::OsStr) -> Option<Cow<'_, str>> {
    use std::os::unix::ffi::OsStrExt;
    Some(from_bytes(name.as_bytes()))
}

#[cfg(not(unix))]
pub fn from_os(name: &std::ffi::OsStr) -> Option<Cow<'_, str>> {
    name.to_str().map(Cow::Borrowed)
}

/// The host file name of a name kiln carries.
#[cfg(unix)]
pub fn to_os(name: &str) -> Cow<'_, std::ffi::OsStr> {
    use std::os::unix::ffi::OsStrExt;
    match to_bytes(name) {
        Cow::Borrowed(b) => Cow::Borrowed(std::ffi::OsStr::from_bytes(b)),
        Cow::Owned(b) => Cow::Owned(std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&b))),
    }
}

#[cfg(not(unix))]
pub fn to_os(name: &str) -> Cow<'_, std::ffi::OsStr> {
    Cow::Borrowed(std::ffi::OsStr::new(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_and_utf8_passes_unchanged() {
        assert!(matches!(from_bytes(b"etc/caf\xc3\xa9"), Cow::Borrowed("etc/café")));
        assert!(matches!(to_bytes("etc/café"), Cow::Borrowed(b"etc/caf\xc3\xa9")));
        let latin1 = from_bytes(b"caf\xe9");
        assert_eq!(latin1, "caf\u{10ffe9}");
        assert_eq!(to_bytes(&latin1), &b"caf\xe9"[..]);
        // A real name holding an escape character is not mistaken for an
        // encoded byte: it is carried byte by byte, and comes back whole.
        let tricky = "x\u{10ffe9}".as_bytes();
        let carried = from_bytes(tricky);
        assert_ne!(carried, latin1);
        assert_ne!(carried, "x\u{10ffe9}");
        assert_eq!(to_bytes(&carried), tricky);
        let mut x = 0x9e37_79b9_u32;
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    [x as u8, b'a', 0xf4, 0x8f, 0xbc, 0xbf, 0xc3, 0xa9][(x >> 8) as usize % 8]
                })
                .collect();
            assert_eq!(to_bytes(&from_bytes(&bytes)), &bytes[..], "{bytes:x?}");
        }
    }

    #[test]
    fn the_separator_and_dots_stay_text() {
        // Paths are split at '/' and compared with "." and "..": an invalid
        // byte next to them must not swallow them.
        let p = from_bytes(b"a\xff/../b\xfe.");
        assert_eq!(p.split('/').collect::<Vec<_>>(), ["a\u{10ffff}", "..", "b\u{10fffe}."]);
    }
}
