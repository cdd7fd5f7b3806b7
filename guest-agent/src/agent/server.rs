//! The request loop: thin handlers that decode a frame and call a `do_*`.

use std::collections::HashMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use kiln_protocol::{
    check_hello, decode, stream, AgentHello, AgentMsg, Frame, FrameError, FrameReader, FrameWriter, HostMsg, TtySize,
    AGENT_VERSION, MAGIC, PROTOCOL_VERSION,
};

use super::console::log;
use super::exec::{self, Running};
use super::init;
use super::layer_disk;
use super::outbox::{send, Out};
use super::reaper::Reaper;
use super::snapshot::{self, Freezer};
use super::ssh;
use super::transport::Conn;
use super::unpack;

#[derive(Default)]
struct State {
    running: HashMap<u32, Running>,
    /// Tar streams being unpacked, by request id.
    unpacking: HashMap<u32, SyncSender<Vec<u8>>>,
    freezer: Freezer,
}

pub fn serve(conn: Conn, reaper: Reaper) -> Result<(), String> {
    let out: Out = Arc::new(Mutex::new(FrameWriter::new(conn.writer)));
    let mut input = FrameReader::new(conn.reader);
    out.lock()
        .unwrap()
        .send(&AgentMsg::Hello(hello()))
        .map_err(|e| format!("sending hello: {e}"))?;
    handshake(&mut input).inspect_err(|e| send(&out, &AgentMsg::Fatal { message: e.clone() }))?;

    let mut state = State::default();
    loop {
        let frame = match input.read_frame() {
            Ok(frame) => frame,
            Err(FrameError::Closed) => {
                log("host disconnected; powering off");
                state.kill_all();
                return Ok(());
            }
            Err(e) => {
                state.kill_all();
                let message = format!("reading from host: {e}");
                send(&out, &AgentMsg::Fatal { message: message.clone() });
                return Err(message);
            }
        };
        match frame {
            Frame::Control(json) => match decode::<HostMsg>(&json) {
                Ok(HostMsg::Shutdown) => {
                    state.kill_all();
                    return Ok(());
                }
                Ok(msg) => state.handle(msg, &out, &reaper),
                Err(e) => {
                    let message = format!("undecodable request from host: {e}");
                    send(&out, &AgentMsg::Fatal { message: message.clone() });
                    return Err(message);
                }
            },
            Frame::Data { id, stream, bytes } => state.data(id, stream, bytes),
        }
    }
}

fn handshake<R: std::io::Read>(input: &mut FrameReader<R>) -> Result<(), String> {
    match input.read_frame() {
        Ok(Frame::Control(json)) => match decode::<HostMsg>(&json) {
            Ok(HostMsg::Hello { magic, version, unix_nanos, entropy }) => {
                check_hello(&magic, version).map_err(|e| e.to_string())?;
                init::set_clock(unix_nanos);
                init::add_entropy(&entropy);
                Ok(())
            }
            Ok(other) => Err(format!("expected hello from host, got {other:?}")),
            Err(e) => Err(format!("garbage instead of the host's hello: {e}")),
        },
        Ok(Frame::Data { .. }) => Err("expected hello from host, got a data frame".into()),
        Err(e) => Err(format!("waiting for the host's hello: {e}")),
    }
}

fn hello() -> AgentHello {
    let uts = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
    };
    AgentHello {
        magic: MAGIC.into(),
        version: PROTOCOL_VERSION,
        agent_version: AGENT_VERSION.into(),
        kernel: field(|u| u.release()),
        arch: field(|u| u.machine()),
    }
}

impl State {
    fn handle(&mut self, msg: HostMsg, out: &Out, reaper: &Reaper) {
        self.running.retain(|_, r| !r.finished());
        match msg {
            HostMsg::Exec(req) => {
                let id = req.id;
                // Preparing a root writes to /scratch (upper dir, mount points).
                let writable = if req.root.is_some() { self.freezer.check_writable() } else { Ok(()) };
                match writable.and_then(|()| exec::do_exec(*req, out.clone(), reaper)) {
                    Ok(running) => {
                        self.running.insert(id, running);
                    }
                    Err(message) => send(out, &AgentMsg::Failed { id, message }),
                }
            }
            HostMsg::Signal { id, signal } => {
                if let Some(running) = self.running.get(&id) {
                    running.signal(signal);
                }
            }
            HostMsg::Resize { id, rows, cols } => {
                if let Some(running) = self.running.get(&id) {
                    running.resize(TtySize { rows, cols });
                }
            }
            HostMsg::Unpack { id, dest } => match self
                .freezer
                .check_writable()
                .and_then(|()| unpack::do_unpack(id, &dest, out.clone()))
            {
                Ok(tx) => {
                    self.unpacking.insert(id, tx);
                }
                Err(message) => send(out, &AgentMsg::Failed { id, message }),
            },
            HostMsg::Snapshot { id, upper } => {
                if let Err(message) = snapshot::do_snapshot(id, &upper, out.clone(), self.freezer.clone()) {
                    send(out, &AgentMsg::Failed { id, message })
                }
            }
            HostMsg::MountLayer { id, disk, dest } => match self
                .freezer
                .check_writable()
                .and_then(|()| layer_disk::do_mount_layer(&disk, &dest))
            {
                Ok(()) => send(out, &AgentMsg::Done { id }),
                Err(message) => send(out, &AgentMsg::Failed { id, message }),
            },
            HostMsg::Thaw { id } => match self.freezer.thaw() {
                Ok(()) => send(out, &AgentMsg::Done { id }),
                Err(message) => send(out, &AgentMsg::Failed { id, message }),
            },
            HostMsg::Hello { .. } => send(out, &AgentMsg::Failed { id: 0, message: "repeated hello".into() }),
            HostMsg::Shutdown => unreachable!("handled by serve"),
        }
    }

    fn data(&mut self, id: u32, kind: u8, bytes: Vec<u8>) {
        let sink = match kind {
            stream::STDIN => self.running.get_mut(&id).and_then(|r| r.stdin.as_ref()).cloned(),
            stream::TAR => self.unpacking.get(&id).cloned(),
            stream::SSH => return ssh::data(id, &bytes),
            _ => None,
        };
        let closing = bytes.is_empty();
        if let Some(tx) = sink {
            // A dropped receiver means the consumer already failed and reported it.
            if !closing {
                let _ = tx.send(bytes);
            }
        }
        if closing {
            match kind {
                stream::STDIN => {
                    if let Some(r) = self.running.get_mut(&id) {
                        r.stdin = None;
                    }
                }
                stream::TAR => {
                    self.unpacking.remove(&id);
                }
                _ => {}
            }
        }
    }

    /// Before power-off: stop every command and thaw /scratch (the final
    /// sync would hang on a frozen file system).
    fn kill_all(&mut self) {
        for running in self.running.values() {
            running.signal(libc::SIGKILL);
        }
        self.freezer.close();
    }
}
