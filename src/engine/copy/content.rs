//! Where the bytes of a COPY/ADD layer's files come from: context files
//! (read in place), heredocs (in memory), unpacked archives and downloads
//! (a private unnamed spool file, gone when the plan is dropped) and other
//! stages or images (the layer stack's own spool).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use kiln_protocol::LayerEntry;
use sha2::{Digest, Sha256};

use crate::engine::context::open_in_root;
use crate::engine::layer_tar::ContentSource;

#[derive(Debug, Clone)]
pub(super) enum Content {
    /// A regular file in the build context: (context root, resolved relative path).
    Host(Arc<Path>, String),
    Inline(Vec<u8>),
    Spool { offset: u64, len: u64 },
    /// The source stack's entry (its own path), read through the stack's spool.
    Stack(LayerEntry),
}

/// An append-only unnamed temp file.
#[derive(Default)]
pub(super) struct Spool {
    file: Option<File>,
    len: u64,
}

impl Spool {
    /// Appends everything `r` yields; returns where it went, its length and sha256.
    pub(super) fn append(&mut self, r: &mut dyn Read) -> io::Result<(Content, u64, [u8; 32])> {
        let offset = self.len;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            self.write(&buf[..n])?;
        }
        Ok((self.since(offset), self.len - offset, hasher.finalize().into()))
    }

    /// Where the next byte written goes.
    pub(super) fn offset(&self) -> u64 {
        self.len
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(tempfile::tempfile()?);
        }
        self.file.as_mut().expect("spool file created above").write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The bytes written since `offset`.
    pub(super) fn since(&self, offset: u64) -> Content {
        Content::Spool { offset, len: self.len - offset }
    }

    /// Everything spooled, from the start (for unpacking a download).
    pub(super) fn into_reader(self) -> io::Result<File> {
        let mut file = self.file.ok_or_else(|| io::Error::other("nothing was spooled"))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }

    pub(super) fn into_file(self) -> Option<File> {
        self.file
    }
}

/// sha256 and length of everything `r` yields.
pub(super) fn hash_reader(r: &mut dyn Read) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let len = io::copy(r, &mut hasher)?;
    Ok((len, hasher.finalize().into()))
}

/// The plan's [`ContentSource`]: dest path → where its bytes are.
pub(super) struct PlanContents {
    pub(super) refs: HashMap<String, Content>,
    pub(super) spool: Option<File>,
    pub(super) stack: Option<Box<dyn ContentSource>>,
}

impl ContentSource for PlanContents {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        let content = self
            .refs
            .get(&entry.path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no content planned for {}", entry.path)))?;
        match content {
            Content::Host(root, rel) => Ok(Box::new(open_in_root(root, rel)?)),
            Content::Inline(bytes) => Ok(Box::new(&bytes[..])),
            Content::Spool { offset, len } => {
                let mut file = self.spool.as_ref().ok_or_else(|| io::Error::other("the spool file is gone"))?;
                file.seek(SeekFrom::Start(*offset))?;
                Ok(Box::new(file.take(*len)))
            }
            Content::Stack(src) => {
                let stack = self.stack.as_mut().ok_or_else(|| io::Error::other("no source stack content"))?;
                stack.open(src)
            }
        }
    }
}

