//! A minimal QEMU Machine Protocol client: JSON commands over a unix
//! socket, answered in order (events in between are skipped). Used to save
//! and resume boot snapshots.

use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("QMP: {0}")]
    Io(#[from] io::Error),
    #[error("QMP: {command} failed: {message}")]
    Command { command: String, message: String },
    #[error("QMP: unexpected answer {0}")]
    Protocol(String),
}

#[cfg(unix)]
type Stream = std::os::unix::net::UnixStream;

pub struct Qmp {
    reader: BufReader<Stream>,
    writer: Stream,
}

impl Qmp {
    /// Connects to QEMU's QMP socket (waiting up to `timeout` for QEMU to
    /// create it) and leaves capabilities negotiation.
    #[cfg(unix)]
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match Stream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(source) => return Err(QmpError::Connect { path: path.display().to_string(), source }),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut qmp = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        writeln!(self.writer, "{request}")?;
        loop {
            let answer = self.read()?;
            if let Some(value) = answer.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = answer.get("error") {
                let message = error.get("desc").and_then(Value::as_str).unwrap_or("unknown error").to_string();
                return Err(QmpError::Command { command: command.to_string(), message });
            }
            // An asynchronous event: not our answer.
        }
    }

    /// Polls `query-migrate` until the migration completed (Ok) or failed.
    pub fn wait_for_migration(&mut self, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.execute("query-migrate", None)?;
            match state.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    let message = state.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                    return Err(QmpError::Command { command: "migrate".into(), message: message.to_string() });
                }
                _ if Instant::now() > deadline => {
                    return Err(QmpError::Command { command: "migrate".into(), message: format!("not done after {timeout:?}") })
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "QEMU closed the QMP socket")));
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol(line.trim().to_string()))
    }
}
