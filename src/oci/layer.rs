//! Layers: an uncompressed tar stream goes in, a compressed blob plus the
//! diff_id (sha256 of the uncompressed tar) come out.
//!
//! gzip is compressed in parallel the way pigz does it: the input is cut into
//! fixed 1 MiB chunks, each chunk is deflated on its own thread and ended
//! with a sync flush (the last one with a final block), and the pieces are
//! concatenated into one deflate stream inside one gzip member. Chunk
//! boundaries depend only on the input, never on the thread count, so equal
//! input gives equal bytes on every machine.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use flate2::{Compress, FlushCompress, Status};
use oci_spec::image::{Descriptor, Digest, MediaType};
use sha2::{Digest as _, Sha256};

use crate::oci::digest;
use crate::oci::media;
use crate::oci::store::{BlobWriter, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> MediaType {
        MediaType::Other(
            match self {
                Compression::None => media::OCI_LAYER_TAR,
                Compression::Gzip => media::OCI_LAYER_GZIP,
                Compression::Zstd => media::OCI_LAYER_ZSTD,
            }
            .to_string(),
        )
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            "none" | "uncompressed" => Ok(Self::None),
            _ => Err(format!("unknown compression {s:?}: expected gzip, zstd or none")),
        }
    }
}

/// A layer blob in the store and the digest of its uncompressed content.
#[derive(Debug, Clone)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
}

const CHUNK: usize = 1 << 20;
const GZIP_LEVEL: u32 = 6;

enum Encoder {
    None(BlobWriter),
    Gzip(ParallelGzip),
    Zstd(zstd::stream::write::Encoder<'static, BlobWriter>),
}

/// Write the uncompressed tar into it, then call [`LayerWriter::finish`].
pub struct LayerWriter {
    encoder: Encoder,
    diff: Sha256,
    compression: Compression,
}

impl LayerWriter {
    /// `blob` comes from [`crate::oci::Store::blob_writer`] or an ingest.
    pub fn new(blob: BlobWriter, compression: Compression) -> Result<Self, StoreError> {
        let encoder = match compression {
            Compression::None => Encoder::None(blob),
            Compression::Gzip => Encoder::Gzip(ParallelGzip::new(blob)),
            Compression::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(blob, 3)
                    .map_err(|source| StoreError::Io { path: "zstd encoder".into(), source })?,
            ),
        };
        Ok(Self { encoder, diff: Sha256::new(), compression })
    }

    pub fn finish(self) -> Result<Layer, StoreError> {
        let io = |source| StoreError::Io { path: "layer compression".into(), source };
        let blob = match self.encoder {
            Encoder::None(b) => b,
            Encoder::Gzip(g) => g.finish().map_err(io)?,
            Encoder::Zstd(z) => z.finish().map_err(io)?,
        };
        let descriptor = blob.commit(self.compression.media_type(), None)?;
        Ok(Layer { descriptor, diff_id: digest::from_hasher(self.diff) })
    }
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::None(w) => w.write(buf)?,
            Encoder::Gzip(w) => w.write(buf)?,
            Encoder::Zstd(w) => w.write(buf)?,
        };
        self.diff.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The uncompressed tar stream of a layer blob in `store`, verified against
/// its digest as it is read.
pub fn open_layer(store: &crate::oci::Store, descriptor: &Descriptor) -> Result<Box<dyn io::Read + Send>, StoreError> {
    let media_type = descriptor.media_type().as_ref();
    let compression = media::layer_compression(media_type).ok_or_else(|| StoreError::Io {
        path: descriptor.digest().to_string().into(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("unsupported layer media type {media_type}")),
    })?;
    let blob = io::BufReader::with_capacity(1 << 20, store.get_blob(descriptor)?);
    Ok(match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(blob).map_err(|source| StoreError::Io {
            path: descriptor.digest().to_string().into(),
            source,
        })?),
    })
}

struct Piece {
    deflated: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

/// pigz-style parallel gzip writer; see the module comment.
pub struct ParallelGzip<W: Write = BlobWriter> {
    out: W,
    buf: Vec<u8>,
    in_flight: VecDeque<JoinHandle<io::Result<Piece>>>,
    max_in_flight: usize,
    crc: crc32fast::Hasher,
    total: u64,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(mut out: W) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // The fixed gzip header: no name, mtime 0, OS "unknown", so output is reproducible.
        let header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        let pending_header = out.write_all(&header);
        let mut g = Self {
            out,
            buf: Vec::with_capacity(CHUNK),
            in_flight: VecDeque::new(),
            max_in_flight: threads * 2,
            crc: crc32fast::Hasher::new(),
            total: 0,
        };
        if pending_header.is_err() {
            // Report the error on the next write rather than in a constructor.
            g.max_in_flight = 0;
        }
        g
    }

    fn dispatch(&mut self, chunk: Vec<u8>, last: bool) -> io::Result<()> {
        while self.in_flight.len() >= self.max_in_flight.max(1) {
            self.drain_one()?;
        }
        self.in_flight.push_back(std::thread::spawn(move || deflate_chunk(&chunk, last)));
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        let Some(h) = self.in_flight.pop_front() else { return Ok(()) };
        let piece = h.join().map_err(|_| io::Error::other("gzip worker panicked"))??;
        self.out.write_all(&piece.deflated)?;
        self.crc.combine(&piece.crc);
        self.total += piece.len;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        let rest = std::mem::take(&mut self.buf);
        self.dispatch(rest, true)?;
        while !self.in_flight.is_empty() {
            self.drain_one()?;
        }
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&(self.total as u32).to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        if self.max_in_flight == 0 {
            return Err(io::Error::other("writing the gzip header failed"));
        }
        let n = data.len();
        while !data.is_empty() {
            // Only dispatch a full chunk once more input arrives, so the last
            // chunk (ended with a final block) is known at finish().
            if self.buf.len() == CHUNK {
                let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
                self.dispatch(full, false)?;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn deflate_chunk(data: &[u8], last: bool) -> io::Result<Piece> {
    let mut c = Compress::new(flate2::Compression::new(GZIP_LEVEL), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&data[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let done_input = c.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete when all input is taken and output space remains.
            _ if !last && done_input && out.capacity() > out.len() => break,
            _ => {}
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    Ok(Piece { deflated: out, crc, len: data.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        // Half-compressible data: runs of text mixed with xorshift noise.
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 4096) % 2 == 0 { b"kiln layer "[i % 11] } else { x as u8 }
            })
            .collect()
    }

    #[test]
    fn parallel_gzip_round_trips_at_chunk_edges_and_is_deterministic() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data = noise(len, len as u64 + 7);
            let compress = |step: usize| {
                let mut g = ParallelGzip::new(Vec::new());
                for part in data.chunks(step.max(1)) {
                    g.write_all(part).unwrap();
                }
                g.finish().unwrap()
            };
            let a = compress(65536);
            let b = compress(777);
            assert_eq!(a, b, "output must not depend on write sizes (len {len})");
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&a[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    #[test]
    fn layer_writer_reports_diff_id_of_uncompressed_tar() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::oci::Store::open(dir.path()).unwrap();
        let data = noise(2 * CHUNK + 5, 3);
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let mut w = LayerWriter::new(store.blob_writer().unwrap(), c).unwrap();
            w.write_all(&data).unwrap();
            let layer = w.finish().unwrap();
            assert_eq!(layer.diff_id, digest::of_bytes(&data));
            let blob = store.read_blob(layer.descriptor.digest(), Some(layer.descriptor.size())).unwrap();
            let mut back = Vec::new();
            match c {
                Compression::Gzip => flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut back).unwrap(),
                Compression::Zstd => zstd::stream::read::Decoder::new(&blob[..]).unwrap().read_to_end(&mut back).unwrap(),
                Compression::None => { back = blob.clone(); 0 }
            };
            assert_eq!(back, data);
        }
    }
}
