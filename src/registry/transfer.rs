//! Byte progress of blob transfers, for whoever shows it (the build's
//! progress view, `kiln pull`/`push`). The registry client only reports;
//! it knows nothing of terminals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use oci_spec::image::Digest;

/// Told as blob bytes move. Pulls and pushes run several blobs at once, so
/// calls for different digests interleave (from several threads); calls for
/// one digest come in order: `started`, `advanced`..., `finished`.
/// A transfer that fails ends without `finished`.
pub trait TransferObserver: Send + Sync {
    /// A blob of `total` bytes starts moving.
    fn started(&self, _digest: &Digest, _total: u64) {}
    /// `bytes` more of it moved.
    fn advanced(&self, _digest: &Digest, _bytes: u64) {}
    /// A broken request is retried: the bytes past `offset` move again.
    fn restarted(&self, _digest: &Digest, _offset: u64) {}
    /// All of it moved (and, for a download, was verified).
    fn finished(&self, _digest: &Digest) {}
}

/// Shows nothing: what a client reports to unless told otherwise.
pub struct NoObserver;

impl TransferObserver for NoObserver {}

/// One request body's share of a blob upload (bytes from `offset`): counts
/// what it sends, and rewinds the observer when the body is sent again.
#[derive(Clone)]
pub(crate) struct UploadMeter {
    pub observer: Arc<dyn TransferObserver>,
    pub digest: Digest,
    pub offset: u64,
    sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for UploadMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UploadMeter({} from {})", self.digest, self.offset)
    }
}

impl UploadMeter {
    pub fn new(observer: Arc<dyn TransferObserver>, digest: Digest, offset: u64) -> Self {
        UploadMeter { observer, digest, offset, sent: Arc::default() }
    }

    /// The body is (re)built for a request: an earlier attempt's bytes count again.
    pub fn begin(&self) {
        if self.sent.swap(0, Ordering::SeqCst) > 0 {
            self.observer.restarted(&self.digest, self.offset);
        }
    }

    pub fn sent(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::SeqCst);
        self.observer.advanced(&self.digest, bytes);
    }
}
