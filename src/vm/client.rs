//! The host's client for the guest agent protocol, over any byte stream.

#[cfg(unix)]
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_protocol::{
    check_hello, decode, stream, AgentHello, AgentMsg, ExecRequest, ExitStatus, Frame, FrameError, FrameReader,
    FrameWriter, HandshakeError, HostMsg, LayerEntry, TtySize,
};

/// How often long waits check the watch (QEMU alive, Ctrl-C).
const POLL: Duration = Duration::from_millis(50);
const CHUNK: usize = kiln_protocol::frame::DATA_CHUNK;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("handshake with the guest agent failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("protocol error from the guest agent: {0}")]
    Protocol(FrameError),
    #[error("the guest agent closed the connection")]
    Disconnected,
    #[error("the guest agent did not say hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("the guest agent failed: {0}")]
    AgentFatal(String),
    #[error("{0}")]
    RequestFailed(String),
    #[error("unexpected message from the guest agent: {0}")]
    Unexpected(String),
    #[error("sending to the guest agent: {0}")]
    Send(FrameError),
    #[error("corrupt snapshot manifest from the guest agent: {0}")]
    Manifest(String),
    /// The watch callback stopped the wait (VM died, user interrupted).
    #[error("{0}")]
    Aborted(String),
}

/// Checked while waiting; an `Err` aborts the wait with that message.
pub type Watch<'a> = &'a mut dyn FnMut() -> Result<(), String>;

/// Polled while a command with a terminal runs: its new size, when the
/// user's terminal changed.
pub type Resizes<'a> = &'a mut dyn FnMut() -> Option<TtySize>;

type SharedWriter = Arc<Mutex<FrameWriter<Box<dyn Write + Send>>>>;

pub struct AgentClient {
    writer: SharedWriter,
    frames: Receiver<Result<Frame, FrameError>>,
    next_id: u32,
    hello: AgentHello,
    last_watch: Instant,
    /// The host ssh agents the next command's `MountSpec::Ssh` sockets
    /// forward to, by their `agent` number ([`AgentClient::forward_ssh_agents`]).
    ssh_agents: Vec<PathBuf>,
}

impl AgentClient {
    /// Waits for the agent's hello (it speaks first), checks it and answers.
    pub fn connect(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        timeout: Duration,
        watch: Watch,
    ) -> Result<AgentClient, ClientError> {
        let (tx, frames) = channel();
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || {
                let mut reader = FrameReader::new(reader);
                loop {
                    let frame = reader.read_frame();
                    let stop = frame.is_err();
                    if tx.send(frame).is_err() || stop {
                        break;
                    }
                }
            })
            .expect("spawning the agent reader thread");
        let writer: SharedWriter = Arc::new(Mutex::new(FrameWriter::new(writer)));
        let deadline = Instant::now() + timeout;
        let hello = loop {
            match frames.recv_timeout(POLL) {
                Ok(Ok(Frame::Control(json))) => match decode::<AgentMsg>(&json) {
                    Ok(AgentMsg::Hello(hello)) => break hello,
                    Ok(other) => return Err(HandshakeError::Unexpected(format!("{other:?}")).into()),
                    Err(e) => return Err(HandshakeError::Frame(e).into()),
                },
                Ok(Ok(Frame::Data { .. })) => return Err(HandshakeError::Unexpected("a data frame".into()).into()),
                Ok(Err(FrameError::Closed)) => return Err(ClientError::Disconnected),
                Ok(Err(e)) => return Err(HandshakeError::Frame(e).into()),
                Err(RecvTimeoutError::Disconnected) => return Err(ClientError::Disconnected),
                Err(RecvTimeoutError::Timeout) => {
                    watch().map_err(ClientError::Aborted)?;
                    if Instant::now() > deadline {
                        return Err(ClientError::HelloTimeout(timeout));
                    }
                }
            }
        };
        check_hello(&hello.magic, hello.version)?;
        let mut entropy = vec![0u8; 64];
        getrandom::getrandom(&mut entropy).map_err(|e| ClientError::Send(FrameError::Io(std::io::Error::other(e.to_string()))))?;
        writer.lock().unwrap().send(&HostMsg::hello(entropy)).map_err(ClientError::Send)?;
        Ok(AgentClient { writer, frames, next_id: 1, hello, last_watch: Instant::now(), ssh_agents: Vec::new() })
    }

    pub fn hello(&self) -> &AgentHello {
        &self.hello
    }

    /// The ssh agent sockets on the host that the next command's ssh
    /// mounts forward to (`MountSpec::Ssh::agent` indexes them).
    pub fn forward_ssh_agents(&mut self, sockets: Vec<PathBuf>) {
        self.ssh_agents = sockets;
    }

    fn send(&self, msg: &HostMsg) -> Result<(), ClientError> {
        self.writer.lock().unwrap().send(msg).map_err(ClientError::Send)
    }

    fn new_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Runs a command. Output is handed to `sink(stream, bytes)` as it
    /// arrives; `stdin`, when given, is streamed to the command from a thread.
    pub fn exec(
        &mut self,
        req: ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn FnMut(u8, &[u8]),
        watch: Watch,
    ) -> Result<ExitStatus, ClientError> {
        self.exec_resizable(req, stdin, sink, &mut || None, watch)
    }

    /// [`AgentClient::exec`] for a command with a terminal (`req.tty`):
    /// sizes from `resizes` are passed on as they come.
    pub fn exec_resizable(
        &mut self,
        mut req: ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn FnMut(u8, &[u8]),
        resizes: Resizes,
        watch: Watch,
    ) -> Result<ExitStatus, ClientError> {
        let id = self.new_id();
        req.id = id;
        req.stdin = stdin.is_some();
        let mut forwards = SshForwards::new(std::mem::take(&mut self.ssh_agents));
        self.send(&HostMsg::Exec(Box::new(req)))?;
        if let Some(mut input) = stdin {
            let writer = self.writer.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => 0,
                    };
                    // n == 0 sends the empty frame that closes the command's stdin.
                    if writer.lock().unwrap().send_data(id, stream::STDIN, &buf[..n]).is_err() || n == 0 {
                        break;
                    }
                }
            });
        }
        // Resizes ride on the watch, which is polled however busy the output is.
        let writer = self.writer.clone();
        let mut watch = || {
            if let Some(TtySize { rows, cols }) = resizes() {
                writer.lock().unwrap().send(&HostMsg::Resize { id, rows, cols }).map_err(|e| e.to_string())?;
            }
            watch()
        };
        loop {
            let frame = match self.next_frame(&mut watch) {
                Ok(frame) => frame,
                Err(err) => {
                    // Don't leave the command running behind an aborted wait.
                    let _ = self.send(&HostMsg::Signal { id, signal: 9 });
                    return Err(err);
                }
            };
            match frame {
                Frame::Data { id: fid, stream, bytes } if fid == id => {
                    if !bytes.is_empty() {
                        sink(stream, &bytes);
                    }
                }
                Frame::Data { id: channel, stream: stream::SSH, bytes } => forwards.guest_bytes(channel, &bytes),
                Frame::Data { .. } => {}
                Frame::Control(json) => match self.decode(&json)? {
                    AgentMsg::SshOpen { id: fid, agent, channel } if fid == id => forwards.open(agent, channel, &self.writer),
                    AgentMsg::Exited { id: fid, status } if fid == id => return Ok(status),
                    AgentMsg::Failed { id: fid, message } if fid == id => {
                        return Err(ClientError::RequestFailed(message))
                    }
                    _ => {}
                },
            }
        }
    }

    /// Streams a tar archive to the agent, which unpacks it under `dest`
    /// (relative to its scratch disk).
    pub fn unpack(&mut self, dest: &str, tar: &mut dyn Read, watch: Watch) -> Result<(), ClientError> {
        let id = self.new_id();
        self.send(&HostMsg::Unpack { id, dest: dest.to_string() })?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match tar.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::RequestFailed(format!("reading the archive to unpack: {e}"))),
            };
            self.writer.lock().unwrap().send_data(id, stream::TAR, &buf[..n]).map_err(ClientError::Send)?;
            if n == 0 {
                break;
            }
            // Stop streaming early if the agent already gave up.
            match self.frames.try_recv() {
                Ok(Ok(Frame::Control(json))) => {
                    if let AgentMsg::Failed { id: fid, message } = self.decode(&json)? {
                        if fid == id {
                            return Err(ClientError::RequestFailed(message));
                        }
                    }
                }
                Ok(Ok(Frame::Data { .. })) | Err(TryRecvError::Empty) => {}
                Ok(Err(e)) => return Err(frame_error(e)),
                Err(TryRecvError::Disconnected) => return Err(ClientError::Disconnected),
            }
        }
        self.wait_done(id, watch)
    }

    /// Asks the agent to describe the upper directory `upper` (relative to
    /// its scratch disk) of a finished overlay step. The scratch file system
    /// stays frozen afterwards, so the disk image can be read on the host,
    /// until [`AgentClient::thaw`].
    pub fn snapshot(&mut self, upper: &str, watch: Watch) -> Result<Vec<LayerEntry>, ClientError> {
        let id = self.new_id();
        self.send(&HostMsg::Snapshot { id, upper: upper.to_string() })?;
        let mut manifest = Manifest::default();
        loop {
            match self.next_frame(watch)? {
                Frame::Data { id: fid, stream: stream::MANIFEST, bytes } if fid == id => manifest.feed(&bytes)?,
                Frame::Data { .. } => {}
                Frame::Control(json) => match self.decode(&json)? {
                    AgentMsg::Done { id: fid } if fid == id => return manifest.finish(),
                    AgentMsg::Failed { id: fid, message } if fid == id => {
                        return Err(ClientError::RequestFailed(message))
                    }
                    _ => {}
                },
            }
        }
    }

    /// Thaws the scratch file system frozen by [`AgentClient::snapshot`].
    pub fn thaw(&mut self, watch: Watch) -> Result<(), ClientError> {
        let id = self.new_id();
        self.send(&HostMsg::Thaw { id })?;
        self.wait_done(id, watch)
    }

    /// Mounts the EROFS layer disk with serial `disk` at `dest` (scratch-relative).
    pub fn mount_layer(&mut self, disk: &str, dest: &str, watch: Watch) -> Result<(), ClientError> {
        let id = self.new_id();
        self.send(&HostMsg::MountLayer { id, disk: disk.to_string(), dest: dest.to_string() })?;
        self.wait_done(id, watch)
    }

    fn wait_done(&mut self, id: u32, watch: Watch) -> Result<(), ClientError> {
        loop {
            if let Frame::Control(json) = self.next_frame(watch)? {
                match self.decode(&json)? {
                    AgentMsg::Done { id: fid } if fid == id => return Ok(()),
                    AgentMsg::Failed { id: fid, message } if fid == id => {
                        return Err(ClientError::RequestFailed(message))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Asks the agent to sync and power off.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.send(&HostMsg::Shutdown)
    }

    fn next_frame(&mut self, watch: Watch) -> Result<Frame, ClientError> {
        // Check the watch even while frames keep coming: a command that
        // floods output must still be stoppable with Ctrl-C.
        if self.last_watch.elapsed() >= POLL {
            self.last_watch = Instant::now();
            watch().map_err(ClientError::Aborted)?;
        }
        loop {
            match self.frames.recv_timeout(POLL) {
                Ok(Ok(frame)) => return Ok(frame),
                Ok(Err(e)) => return Err(frame_error(e)),
                Err(RecvTimeoutError::Disconnected) => return Err(ClientError::Disconnected),
                Err(RecvTimeoutError::Timeout) => watch().map_err(ClientError::Aborted)?,
            }
        }
    }

    fn decode(&self, json: &[u8]) -> Result<AgentMsg, ClientError> {
        match decode::<AgentMsg>(json).map_err(ClientError::Protocol)? {
            AgentMsg::Fatal { message } => Err(ClientError::AgentFatal(message)),
            msg => Ok(msg),
        }
    }
}

/// A snapshot manifest arriving in data frames: JSON lines, one
/// [`LayerEntry`] each, split anywhere by the framing.
#[derive(Default)]
struct Manifest {
    entries: Vec<LayerEntry>,
    partial: Vec<u8>,
    closed: bool,
}

impl Manifest {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if bytes.is_empty() {
            self.closed = true;
            return Ok(());
        }
        if self.closed {
            return Err(ClientError::Manifest("data after the end of the stream".into()));
        }
        self.partial.extend_from_slice(bytes);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return Ok(()) };
        for line in self.partial[..end].split(|&b| b == b'\n') {
            let entry = serde_json::from_slice(line)
                .map_err(|e| ClientError::Manifest(format!("entry {}: {e}", self.entries.len() + 1)))?;
            self.entries.push(entry);
        }
        self.partial.drain(..=end);
        Ok(())
    }

    fn finish(self) -> Result<Vec<LayerEntry>, ClientError> {
        if !self.closed || !self.partial.is_empty() {
            return Err(ClientError::Manifest(format!("truncated after {} entries", self.entries.len())));
        }
        Ok(self.entries)
    }
}

/// A command's forwarded ssh-agent connections: each guest channel is a
/// connection to the host agent it names; the agent's replies go back from
/// a thread per connection. Dropped with the command, closing them all.
struct SshForwards {
    #[cfg(unix)]
    agents: Vec<PathBuf>,
    #[cfg(unix)]
    open: HashMap<u32, std::os::unix::net::UnixStream>,
}

impl SshForwards {
    fn new(agents: Vec<PathBuf>) -> Self {
        #[cfg(unix)]
        return SshForwards { agents, open: HashMap::new() };
        #[cfg(not(unix))]
        {
            let _ = agents;
            SshForwards {}
        }
    }

    /// Connects `channel` to host agent `agent`; when that fails the
    /// guest's connection is closed (its client sees the agent hang up).
    fn open(&mut self, agent: u32, channel: u32, writer: &SharedWriter) {
        let close = |writer: &SharedWriter| {
            let _ = writer.lock().unwrap().send_data(channel, stream::SSH, &[]);
        };
        #[cfg(unix)]
        {
            let Some(path) = self.agents.get(agent as usize) else { return close(writer) };
            let Ok(conn) = std::os::unix::net::UnixStream::connect(path) else { return close(writer) };
            let Ok(mut reader) = conn.try_clone() else { return close(writer) };
            let writer = writer.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => 0,
                    };
                    // n == 0 sends the empty frame that closes the guest's side.
                    if writer.lock().unwrap().send_data(channel, stream::SSH, &buf[..n]).is_err() || n == 0 {
                        break;
                    }
                }
            });
            self.open.insert(channel, conn);
        }
        #[cfg(not(unix))]
        {
            // No unix sockets to forward to: `--ssh` is refused on such hosts.
            let _ = agent;
            close(writer)
        }
    }

    /// The guest's bytes for `channel`; empty: the guest's client closed.
    fn guest_bytes(&mut self, channel: u32, bytes: &[u8]) {
        #[cfg(unix)]
        if let Some(conn) = self.open.get_mut(&channel) {
            if bytes.is_empty() || conn.write_all(bytes).is_err() {
                let _ = conn.shutdown(std::net::Shutdown::Both);
                self.open.remove(&channel);
            }
        }
        #[cfg(not(unix))]
        let _ = (channel, bytes);
    }
}

impl Drop for SshForwards {
    fn drop(&mut self) {
        // Wakes the reply threads, which end with their connection.
        #[cfg(unix)]
        for conn in self.open.values() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn frame_error(e: FrameError) -> ClientError {
    match e {
        FrameError::Closed => ClientError::Disconnected,
        other => ClientError::Protocol(other),
    }
}

#[cfg(all(test, unix))]
mod tests {
    //! The client against a scripted fake agent on a socket pair.
    use super::*;
    use kiln_protocol::{AGENT_VERSION, MAGIC, PROTOCOL_VERSION};
    use std::os::unix::net::UnixStream;

    fn agent_hello(version: u32) -> AgentMsg {
        AgentMsg::Hello(AgentHello {
            magic: MAGIC.into(),
            version,
            agent_version: AGENT_VERSION.into(),
            kernel: "6.1.0-test".into(),
            arch: "aarch64".into(),
        })
    }

    fn pair() -> (AgentClientParts, UnixStream) {
        let (host, agent) = UnixStream::pair().unwrap();
        let reader = host.try_clone().unwrap();
        ((Box::new(reader), Box::new(host)), agent)
    }
    type AgentClientParts = (Box<dyn Read + Send>, Box<dyn Write + Send>);

    fn connect(parts: AgentClientParts) -> Result<AgentClient, ClientError> {
        AgentClient::connect(parts.0, parts.1, Duration::from_secs(5), &mut || Ok(()))
    }

    #[test]
    fn exec_streams_output_and_returns_status() {
        let (parts, agent) = pair();
        let fake = std::thread::spawn(move || {
            let mut w = FrameWriter::new(agent.try_clone().unwrap());
            let mut r = FrameReader::new(agent);
            w.send(&agent_hello(PROTOCOL_VERSION)).unwrap();
            assert!(matches!(r.read_frame().unwrap(), Frame::Control(_))); // host hello
            let Frame::Control(json) = r.read_frame().unwrap() else { panic!() };
            let HostMsg::Exec(req) = decode::<HostMsg>(&json).unwrap() else { panic!() };
            assert_eq!(req.argv, ["echo", "hi"]);
            w.send_data(req.id, stream::STDOUT, b"hi\n").unwrap();
            w.send_data(req.id, stream::STDERR, b"warn\n").unwrap();
            w.send(&AgentMsg::Exited { id: req.id, status: ExitStatus::Code { code: 42 } }).unwrap();
        });
        let mut client = connect(parts).unwrap();
        assert_eq!(client.hello().arch, "aarch64");
        let mut out = Vec::new();
        let req = ExecRequest { argv: vec!["echo".into(), "hi".into()], ..Default::default() };
        let status = client.exec(req, None, &mut |s, b| out.push((s, b.to_vec())), &mut || Ok(())).unwrap();
        assert_eq!(status, ExitStatus::Code { code: 42 });
        assert_eq!(out, vec![(stream::STDOUT, b"hi\n".to_vec()), (stream::STDERR, b"warn\n".to_vec())]);
        fake.join().unwrap();
    }

    #[test]
    fn terminal_resizes_reach_the_agent_for_the_running_command() {
        let (parts, agent) = pair();
        let fake = std::thread::spawn(move || {
            let mut w = FrameWriter::new(agent.try_clone().unwrap());
            let mut r = FrameReader::new(agent);
            w.send(&agent_hello(PROTOCOL_VERSION)).unwrap();
            let _ = r.read_frame(); // host hello
            let Frame::Control(json) = r.read_frame().unwrap() else { panic!() };
            let HostMsg::Exec(req) = decode::<HostMsg>(&json).unwrap() else { panic!() };
            assert_eq!(req.tty, Some(TtySize { rows: 24, cols: 80 }));
            let Frame::Control(json) = r.read_frame().unwrap() else { panic!() };
            let resize = decode::<HostMsg>(&json).unwrap();
            assert!(matches!(resize, HostMsg::Resize { id, rows: 50, cols: 132 } if id == req.id), "{resize:?}");
            w.send(&AgentMsg::Exited { id: req.id, status: ExitStatus::Code { code: 0 } }).unwrap();
        });
        let mut client = connect(parts).unwrap();
        let req = ExecRequest { argv: vec!["sh".into()], tty: Some(TtySize { rows: 24, cols: 80 }), ..Default::default() };
        let mut pending = Some(TtySize { rows: 50, cols: 132 });
        let status = client.exec_resizable(req, None, &mut |_, _| {}, &mut || pending.take(), &mut || Ok(())).unwrap();
        assert_eq!(status, ExitStatus::Code { code: 0 });
        fake.join().unwrap();
    }

    #[test]
    fn version_mismatch_is_reported() {
        let (parts, agent) = pair();
        FrameWriter::new(agent.try_clone().unwrap()).send(&agent_hello(PROTOCOL_VERSION + 1)).unwrap();
        let err = connect(parts).err().unwrap();
        assert!(err.to_string().contains("version mismatch"), "{err}");
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let (parts, mut agent) = pair();
        agent.write_all(b"Booting Linux on physical CPU 0x0\n").unwrap();
        let err = connect(parts).err().unwrap();
        assert!(err.to_string().contains("corrupt frame"), "{err}");
    }

    #[test]
    fn corrupt_frame_mid_command_is_an_error() {
        let (parts, agent) = pair();
        let fake = std::thread::spawn(move || {
            let mut w = FrameWriter::new(agent.try_clone().unwrap());
            w.send(&agent_hello(PROTOCOL_VERSION)).unwrap();
            let mut raw = agent;
            raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1]).unwrap();
            raw
        });
        let mut client = connect(parts).unwrap();
        let err = client
            .exec(ExecRequest { argv: vec!["x".into()], ..Default::default() }, None, &mut |_, _| {}, &mut || Ok(()))
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(FrameError::TooLarge(_))), "{err}");
        drop(fake.join());
    }

    #[test]
    fn watch_is_checked_while_output_floods() {
        let (parts, agent) = pair();
        let fake = std::thread::spawn(move || {
            let mut w = FrameWriter::new(agent.try_clone().unwrap());
            let mut r = FrameReader::new(agent);
            w.send(&agent_hello(PROTOCOL_VERSION)).unwrap();
            let _ = r.read_frame(); // host hello
            let _ = r.read_frame(); // exec
            while w.send_data(1, stream::STDERR, b"flood\n").is_ok() {}
        });
        let mut client = connect(parts).unwrap();
        let started = Instant::now();
        let err = client
            .exec(
                ExecRequest { argv: vec!["yes".into()], ..Default::default() },
                None,
                &mut |_, _| {},
                &mut || if started.elapsed() > Duration::from_millis(300) { Err("interrupted".into()) } else { Ok(()) },
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "interrupted");
        drop(client);
        drop(fake);
    }

    #[test]
    fn watch_aborts_a_wait() {
        let (parts, agent) = pair();
        FrameWriter::new(agent.try_clone().unwrap()).send(&agent_hello(PROTOCOL_VERSION)).unwrap();
        let mut client = connect(parts).unwrap();
        let err = client
            .exec(
                ExecRequest { argv: vec!["sleep".into()], ..Default::default() },
                None,
                &mut |_, _| {},
                &mut || Err("interrupted".into()),
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "interrupted");
        drop(agent);
    }

    /// A fake agent that answers one snapshot request with `manifest` (sent
    /// in the given pieces), closing the stream when `close` is set.
    fn snapshot_against(pieces: Vec<Vec<u8>>, close: bool) -> Result<Vec<LayerEntry>, ClientError> {
        let (parts, agent) = pair();
        let fake = std::thread::spawn(move || {
            let mut w = FrameWriter::new(agent.try_clone().unwrap());
            let mut r = FrameReader::new(agent);
            w.send(&agent_hello(PROTOCOL_VERSION)).unwrap();
            let _ = r.read_frame(); // host hello
            let Frame::Control(json) = r.read_frame().unwrap() else { panic!() };
            let HostMsg::Snapshot { id, upper } = decode::<HostMsg>(&json).unwrap() else { panic!() };
            assert_eq!(upper, "u/1");
            w.send_data(id + 100, stream::MANIFEST, b"not ours\n").unwrap(); // another request's stream
            for piece in pieces {
                w.send_data(id, stream::MANIFEST, &piece).unwrap();
            }
            if close {
                w.send_data(id, stream::MANIFEST, b"").unwrap();
            }
            w.send(&AgentMsg::Done { id }).unwrap();
        });
        let mut client = connect(parts).unwrap();
        let result = client.snapshot("u/1", &mut || Ok(()));
        fake.join().unwrap();
        result
    }

    #[test]
    fn snapshot_manifest_is_reassembled_across_frames() {
        use kiln_protocol::EntryKind;
        let entries = vec![
            LayerEntry {
                path: "etc".into(),
                kind: EntryKind::Dir { opaque: true },
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 5,
                mtime_nsec: 6,
                xattrs: vec![],
            },
            LayerEntry {
                path: "etc/gone".into(),
                kind: EntryKind::Whiteout,
                mode: 0,
                uid: 0,
                gid: 0,
                mtime: 7,
                mtime_nsec: 0,
                xattrs: vec![kiln_protocol::Xattr { name: "user.x".into(), value: vec![0, 255] }],
            },
        ];
        let mut text = Vec::new();
        for e in &entries {
            text.extend(serde_json::to_vec(e).unwrap());
            text.push(b'\n');
        }
        // Split inside the first line and right after the first newline.
        let cut = text.iter().position(|&b| b == b'\n').unwrap() + 1;
        let pieces = vec![text[..7].to_vec(), text[7..cut].to_vec(), text[cut..].to_vec()];
        assert_eq!(snapshot_against(pieces, true).unwrap(), entries);
        assert!(snapshot_against(vec![], true).unwrap().is_empty());
    }

    #[test]
    fn truncated_or_corrupt_manifests_are_errors() {
        let err = snapshot_against(vec![b"{\"path\":\"a\"".to_vec()], true).unwrap_err();
        assert!(matches!(err, ClientError::Manifest(ref m) if m.contains("truncated")), "{err}");
        let err = snapshot_against(vec![], false).unwrap_err();
        assert!(matches!(err, ClientError::Manifest(ref m) if m.contains("truncated")), "{err}");
        let err = snapshot_against(vec![b"{\"path\":1}\n".to_vec()], true).unwrap_err();
        assert!(matches!(err, ClientError::Manifest(ref m) if m.contains("entry 1")), "{err}");
    }
}
