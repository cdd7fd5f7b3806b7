//! `--mount=type=ssh`: a unix socket in the command's root whose every
//! connection is forwarded to an ssh agent on the host. A connection is a
//! channel: announced with `AgentMsg::SshOpen`, then its bytes go both ways
//! as data frames on stream SSH of the channel, an empty frame ending a
//! direction. Nothing of it touches the scratch disk.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kiln_protocol::{stream, AgentMsg, SSH_CHANNEL_BASE};

use super::outbox::{send, send_data, Out};

/// Open channels: the guest side of each connection, for the host's bytes.
static CHANNELS: Mutex<Option<HashMap<u32, UnixStream>>> = Mutex::new(None);
static NEXT_CHANNEL: AtomicU32 = AtomicU32::new(SSH_CHANNEL_BASE);
/// How often the accepting thread looks whether its command is gone.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// A socket accepting connections for one command; stopped by `stop`.
pub struct Listener {
    path: PathBuf,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Binds the socket at `path` (on the agent's tmpfs), owned and moded as
    /// the mount asks, and forwards its connections for request `id`.
    pub fn start(path: &Path, mode: u32, uid: u32, gid: u32, id: u32, agent: u32, out: Out) -> Result<Listener, String> {
        let at = |e: io::Error| format!("ssh socket {}: {e}", path.display());
        let listener = UnixListener::bind(path).map_err(at)?;
        let stop = |e: String| {
            let _ = std::fs::remove_file(path);
            e
        };
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(at).map_err(stop)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(at).map_err(stop)?;
        listener.set_nonblocking(true).map_err(at).map_err(stop)?;
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => open(conn, id, agent, &out),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                        std::thread::sleep(ACCEPT_POLL)
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Listener { path: path.to_path_buf(), done, thread: Some(thread) })
    }

    /// Stops accepting and removes the socket; open connections end with
    /// the command's processes.
    pub fn stop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Announces a new connection and pumps its bytes to the host.
fn open(conn: UnixStream, id: u32, agent: u32, out: &Out) {
    let _ = conn.set_nonblocking(false);
    let Ok(writer) = conn.try_clone() else { return };
    let channel = NEXT_CHANNEL.fetch_add(1, Ordering::SeqCst);
    CHANNELS.lock().unwrap().get_or_insert_with(HashMap::new).insert(channel, writer);
    send(out, &AgentMsg::SshOpen { id, agent, channel });
    let out = out.clone();
    std::thread::spawn(move || {
        let mut conn = conn;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !send_data(&out, channel, stream::SSH, &buf[..n]) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        send_data(&out, channel, stream::SSH, &[]);
        if let Some(channels) = CHANNELS.lock().unwrap().as_mut() {
            channels.remove(&channel);
        }
    });
}

/// The host's bytes for `channel`; empty: the host's agent closed.
pub fn data(channel: u32, bytes: &[u8]) {
    let mut channels = CHANNELS.lock().unwrap();
    let Some(conn) = channels.as_mut().and_then(|c| c.get_mut(&channel)) else { return };
    if bytes.is_empty() || conn.write_all(bytes).is_err() {
        let _ = conn.shutdown(Shutdown::Write);
    }
}
