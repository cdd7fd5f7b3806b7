//! Handing an image to a Docker engine, as buildx's `--load` does: a Docker
//! archive streamed into `docker load`. Going through the CLI means the
//! user's own context, `DOCKER_HOST` and TLS settings apply unchanged.

use std::io::{self, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;

use crate::oci::layout::{self, ExportEntry, Format, LayoutError};
use crate::oci::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum DockerLoadError {
    #[error("the docker CLI was not found on PATH (loading into a Docker engine goes through `docker load`)")]
    NoCli,
    #[error("starting `docker load`: {0}")]
    Spawn(io::Error),
    #[error("`docker load` failed ({status}): {stderr}")]
    Failed { status: ExitStatus, stderr: String },
    #[error(transparent)]
    Export(#[from] LayoutError),
}

/// Streams `entry` as a Docker archive into `docker load` and returns what
/// docker printed (`Loaded image: NAME`).
pub fn load(store: &Store, entry: &ExportEntry, cancel: &AtomicBool) -> Result<String, DockerLoadError> {
    let mut child = match Command::new("docker").arg("load").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DockerLoadError::NoCli),
        Err(e) => return Err(DockerLoadError::Spawn(e)),
    };
    // Drained on threads so that a chatty docker never blocks the archive.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = layout::export_to_writer(store, std::slice::from_ref(entry), Format::DockerArchive, None, &mut stdin, cancel);
    drop(stdin);
    if let Err(e) = &written {
        // docker gave up early (its reason is on stderr) unless kiln itself failed or was interrupted.
        if !is_broken_pipe(e) {
            let _ = child.kill();
        }
    }
    let status = child.wait().map_err(DockerLoadError::Spawn)?;
    let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    if !status.success() {
        return Err(DockerLoadError::Failed { status, stderr: err.trim().to_string() });
    }
    written?;
    Ok(out.trim().to_string())
}

fn is_broken_pipe(e: &LayoutError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe) {
            return true;
        }
        source = s.source();
    }
    false
}
