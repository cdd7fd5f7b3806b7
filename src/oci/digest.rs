//! sha256 digests: computing them, checking them, and mapping them to file names.

use std::io::{self, Read, Write};

use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Invalid(String),
    #[error("unsupported digest algorithm in {0}: only sha256 is supported")]
    Unsupported(String),
}

/// Parses a digest string, accepting only sha256 (the only algorithm kiln
/// writes, and the one every registry uses).
pub fn parse(s: &str) -> Result<Digest, DigestError> {
    let d: Digest = s.parse().map_err(|_| DigestError::Invalid(s.to_string()))?;
    sha256_hex(&d)?;
    Ok(d)
}

/// The hex part of a sha256 digest. oci-spec has already checked that it is
/// exactly 64 lowercase hex digits, so it is safe to use as a file name.
pub fn sha256_hex(d: &Digest) -> Result<&str, DigestError> {
    if d.algorithm().as_ref() != "sha256" {
        return Err(DigestError::Unsupported(d.to_string()));
    }
    Ok(d.digest())
}

pub fn of_bytes(data: &[u8]) -> Digest {
    from_hasher(Sha256::new_with_prefix(data))
}

pub fn from_hasher(h: Sha256) -> Digest {
    let hex = hex::encode(h.finalize());
    format!("sha256:{hex}").parse().expect("a sha256 hex digest is always valid")
}

/// A writer that hashes and counts everything passing through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), written: 0 }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The digest and size of everything written, plus the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (from_hasher(self.hasher), self.written, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that fails at end of stream when the content does not match the
/// expected digest and size, so a corrupt blob is never read as if it were good.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected: Digest,
    expected_size: u64,
    checked: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: u64) -> Self {
        Self { inner, hasher: Sha256::new(), read: 0, expected, expected_size, checked: false }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.expected_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} is larger than its recorded size {}", self.expected, self.expected_size),
            ));
        }
        if n == 0 && !buf.is_empty() && !self.checked {
            self.checked = true;
            let got = from_hasher(std::mem::take(&mut self.hasher));
            if self.read != self.expected_size || got != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob {} is corrupt: read {} bytes with digest {got}, expected {} bytes",
                        self.expected, self.read, self.expected_size
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            of_bytes(b"{}").to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn rejects_path_tricks_and_other_algorithms() {
        assert!(parse("sha256:../../etc/passwd").is_err());
        assert!(parse("sha256:ABCDEF").is_err());
        assert!(parse(&format!("sha512:{}", "a".repeat(128))).is_err());
        assert!(parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn verifying_reader_catches_corruption() {
        let good = of_bytes(b"hello");
        let mut out = Vec::new();
        VerifyingReader::new(&b"hello"[..], good.clone(), 5).read_to_end(&mut out).unwrap();
        assert!(VerifyingReader::new(&b"hellO"[..], good.clone(), 5).read_to_end(&mut out).is_err());
        assert!(VerifyingReader::new(&b"hell"[..], good.clone(), 5).read_to_end(&mut out).is_err());
        assert!(VerifyingReader::new(&b"hello!"[..], good, 5).read_to_end(&mut out).is_err());
    }
}
