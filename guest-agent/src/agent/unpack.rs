//! `do_unpack`: unpack a tar streamed from the host into the scratch disk
//! (`kiln_protocol::layer_unpack` does the unpacking).

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use kiln_protocol::layer_unpack::unpack;
use kiln_protocol::AgentMsg;

use super::outbox::{send, Out};
use super::scratch::scratch_path;

pub fn do_unpack(id: u32, dest: &str, out: Out) -> Result<SyncSender<Vec<u8>>, String> {
    let dest = scratch_path(dest)?;
    std::fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let (tx, rx) = sync_channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut reader = ChannelReader { rx, buf: Vec::new(), pos: 0 };
        let result = unpack(&mut reader, &dest);
        // Drain what is left so the host's stream is consumed either way.
        let _ = io::copy(&mut reader, &mut io::sink());
        match result {
            Ok(()) => send(&out, &AgentMsg::Done { id }),
            Err(e) => send(&out, &AgentMsg::Failed { id, message: format!("unpacking into {}: {}", dest.display(), with_causes(&e)) }),
        }
    });
    Ok(tx)
}

/// `e` and the errors under it.
fn with_causes(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

