//! Framing: turns a byte stream into bounded, typed frames and back.

use std::io::{self, Read, Write};

/// Largest payload of one frame. Data streams are chunked below this.
pub const MAX_FRAME: usize = 1 << 20;

/// Size of the data chunks writers should use (leaves room for the data header).
pub const DATA_CHUNK: usize = 256 * 1024;

const KIND_CONTROL: u8 = 1;
const KIND_DATA: u8 = 2;
const HEADER_LEN: usize = 5;
const DATA_HEADER_LEN: usize = 5;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON control message, not yet decoded into a message type.
    Control(Vec<u8>),
    /// Bytes for stream `stream` of request `id`; empty means end of stream.
    Data { id: u32, stream: u8, bytes: Vec<u8> },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error on the agent connection: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt frame: length {0} exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("corrupt frame: unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("corrupt frame: data frame shorter than its header")]
    ShortData,
    #[error("corrupt control message: {0}")]
    BadJson(#[from] serde_json::Error),
}

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads the next frame. A clean end of stream before a header is [`FrameError::Closed`].
    pub fn read_frame(&mut self) -> Result<Frame, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let mut filled = 0;
        while filled < HEADER_LEN {
            match self.inner.read(&mut header[filled..]) {
                Ok(0) if filled == 0 => return Err(FrameError::Closed),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = header[4];
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if kind != KIND_CONTROL && kind != KIND_DATA {
            return Err(FrameError::UnknownKind(kind));
        }
        let mut payload = vec![0u8; len];
        self.inner.read_exact(&mut payload)?;
        decode_payload(kind, payload)
    }
}

fn decode_payload(kind: u8, mut payload: Vec<u8>) -> Result<Frame, FrameError> {
    if kind == KIND_CONTROL {
        return Ok(Frame::Control(payload));
    }
    if payload.len() < DATA_HEADER_LEN {
        return Err(FrameError::ShortData);
    }
    let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let stream = payload[4];
    payload.drain(..DATA_HEADER_LEN);
    Ok(Frame::Data { id, stream, bytes: payload })
}

/// Writes frames to a byte stream. Each frame is written with one `write_all`
/// so frames from one writer never interleave when the writer is shared
/// behind a mutex.
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, buf: Vec::with_capacity(DATA_CHUNK + 16) }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Writes one control message.
    pub fn send<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        let json = serde_json::to_vec(msg)?;
        if json.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(json.len()));
        }
        self.buf.clear();
        self.buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
        self.buf.push(KIND_CONTROL);
        self.buf.extend_from_slice(&json);
        self.flush_buf()
    }

    /// Writes data for one stream, split into chunks; an empty `bytes` closes the stream.
    pub fn send_data(&mut self, id: u32, stream: u8, bytes: &[u8]) -> Result<(), FrameError> {
        if bytes.is_empty() {
            return self.send_data_chunk(id, stream, bytes);
        }
        for chunk in bytes.chunks(DATA_CHUNK) {
            self.send_data_chunk(id, stream, chunk)?;
        }
        Ok(())
    }

    fn send_data_chunk(&mut self, id: u32, stream: u8, chunk: &[u8]) -> Result<(), FrameError> {
        let len = DATA_HEADER_LEN + chunk.len();
        self.buf.clear();
        self.buf.extend_from_slice(&(len as u32).to_be_bytes());
        self.buf.push(KIND_DATA);
        self.buf.extend_from_slice(&id.to_be_bytes());
        self.buf.push(stream);
        self.buf.extend_from_slice(chunk);
        self.flush_buf()
    }

    fn flush_buf(&mut self) -> Result<(), FrameError> {
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AgentMsg, HostMsg};

    #[test]
    fn control_and_data_round_trip() {
        let mut w = FrameWriter::new(Vec::new());
        w.send(&HostMsg::Shutdown).unwrap();
        w.send_data(7, 1, b"hello").unwrap();
        w.send_data(7, 1, b"").unwrap();
        let bytes = std::mem::take(w.get_mut());
        let mut r = FrameReader::new(&bytes[..]);
        match r.read_frame().unwrap() {
            Frame::Control(json) => {
                assert!(matches!(serde_json::from_slice(&json).unwrap(), HostMsg::Shutdown))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(r.read_frame().unwrap(), Frame::Data { id: 7, stream: 1, bytes: b"hello".to_vec() });
        assert_eq!(r.read_frame().unwrap(), Frame::Data { id: 7, stream: 1, bytes: vec![] });
        assert!(matches!(r.read_frame(), Err(FrameError::Closed)));
    }

    #[test]
    fn large_data_is_chunked_below_the_limit() {
        let payload = vec![0xabu8; 3 * DATA_CHUNK + 17];
        let mut w = FrameWriter::new(Vec::new());
        w.send_data(1, 2, &payload).unwrap();
        let bytes = std::mem::take(w.get_mut());
        let mut r = FrameReader::new(&bytes[..]);
        let mut got = Vec::new();
        let mut frames = 0;
        while let Ok(Frame::Data { bytes, .. }) = r.read_frame() {
            got.extend(bytes);
            frames += 1;
        }
        assert_eq!(frames, 4);
        assert_eq!(got, payload);
    }

    #[test]
    fn garbage_is_rejected_not_misparsed() {
        // A console line where a frame was expected: the length is huge.
        let mut r = FrameReader::new(&b"[    0.000000] Booting Linux"[..]);
        assert!(matches!(r.read_frame(), Err(FrameError::TooLarge(_))));
        // A plausible length with an unknown kind byte.
        let mut r = FrameReader::new(&[0u8, 0, 0, 1, 9, 0][..]);
        assert!(matches!(r.read_frame(), Err(FrameError::UnknownKind(9))));
        // A data frame too short for its header.
        let mut r = FrameReader::new(&[0u8, 0, 0, 2, 2, 0, 0][..]);
        assert!(matches!(r.read_frame(), Err(FrameError::ShortData)));
        // Truncated payload.
        let mut r = FrameReader::new(&[0u8, 0, 0, 9, 1, b'{'][..]);
        assert!(matches!(r.read_frame(), Err(FrameError::Io(_))));
        let _ = AgentMsg::Fatal { message: String::new() };
    }
}
