//! Downloads one pinned .deb from the mirror, hashing while it streams; the
//! file is only handed on once its sha256 matches the pin.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::KernelError;

/// What to fetch and what it must hash to.
pub struct Pinned<'a> {
    pub url: &'a str,
    pub package: &'a str,
    pub size: u64,
    pub sha256: &'a str,
}

/// Downloads `pin` into `dest`. On any failure, including a checksum
/// mismatch, `dest` is removed. Blocking: runs a private tokio runtime, on a
/// helper thread when the caller is itself inside a runtime.
pub fn fetch(pin: &Pinned<'_>, dest: &Path) -> Result<(), KernelError> {
    let result = if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| fetch_blocking(pin, dest)).join().expect("download thread panicked"))
    } else {
        fetch_blocking(pin, dest)
    };
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

fn fetch_blocking(pin: &Pinned<'_>, dest: &Path) -> Result<(), KernelError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| KernelError::Io { context: "starting the download runtime".into(), source })?;
    runtime.block_on(fetch_async(pin, dest))
}

async fn fetch_async(pin: &Pinned<'_>, dest: &Path) -> Result<(), KernelError> {
    let net = |e: reqwest::Error| KernelError::Download { url: pin.url.to_string(), message: error_chain(&e) };
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(net)?;
    let response = client.get(pin.url).send().await.map_err(net)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
        return Err(KernelError::StalePin { package: pin.package.to_string(), url: pin.url.to_string() });
    }
    if !status.is_success() {
        return Err(KernelError::Download { url: pin.url.to_string(), message: format!("HTTP status {status}") });
    }
    let io = |source| KernelError::Io { context: format!("writing {}", dest.display()), source };
    let mut file = std::io::BufWriter::new(std::fs::File::create(dest).map_err(io)?);
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(net)?;
        received += chunk.len() as u64;
        if received > pin.size {
            // Not the pinned file; no point downloading the rest of it.
            return Err(KernelError::SizeMismatch { url: pin.url.to_string(), expected: pin.size, actual_at_least: received });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(io)?;
    }
    // No fsync: the .deb is read back at once and deleted after unpacking.
    file.flush().map_err(io)?;
    let actual = hex::encode(hasher.finalize());
    if actual != pin.sha256 {
        return Err(KernelError::ChecksumMismatch {
            url: pin.url.to_string(),
            expected: pin.sha256.to_string(),
            actual,
            size: received,
        });
    }
    Ok(())
}

/// reqwest's Display hides the cause (DNS, TLS, refused...); users need it.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
