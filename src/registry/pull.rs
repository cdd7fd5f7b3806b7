//! Pulling: manifest (and index) by tag or digest, platform selection,
//! bounded concurrent blob downloads, each verified before it is staged.
//! Nothing reaches the store or its tags until every blob is verified.

use std::io::Write;

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use oci_spec::image::{Descriptor, Digest, MediaType};
use reqwest::{Method, StatusCode};

use crate::oci::digest;
use crate::oci::media;
use crate::oci::model::{self, Manifest};
use crate::oci::store::{media_type_of, Ingest, Store, StoreError};
use crate::platform::Platform;
use crate::registry::client::{self, Body, Client, Request};
use crate::registry::reference::Reference;
use crate::registry::RegistryError;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Which image of an index to pull; the host's when None.
    pub platform: Option<Platform>,
    /// Pull every image of an index and tag the index itself.
    pub all_platforms: bool,
}

#[derive(Debug, Clone)]
pub struct PullReport {
    /// The name the image was tagged with in the store.
    pub name: String,
    /// What the tag points at: a manifest, or an index with `all_platforms`.
    pub descriptor: Descriptor,
    pub blobs_downloaded: usize,
    pub bytes_downloaded: u64,
}

impl Client {
    /// Pulls `reference` into `store` and tags it with the reference's full name.
    pub async fn pull(&self, store: &Store, reference: &Reference, opts: &PullOptions) -> Result<PullReport> {
        let scopes = [format!("repository:{}:pull", reference.repository)];
        let what = format!("pulling {reference}");
        let ingest = store.begin_ingest()?;
        let (bytes, desc) = self.fetch_manifest(reference, &reference.target(), None, &scopes).await?;
        let top = Manifest::parse(&bytes, Some(desc.media_type().as_ref()), &reference.to_string())?;
        stage(&ingest, &bytes, &desc)?;
        let mut images: Vec<(Descriptor, Manifest)> = Vec::new();
        let tagged = match top {
            Manifest::Index(index) => {
                let children: Vec<Descriptor> = if opts.all_platforms {
                    index.manifests().iter().filter(|d| media::is_manifest(d.media_type().as_ref())).cloned().collect()
                } else {
                    let want = opts.platform.clone().unwrap_or_else(Platform::host);
                    vec![model::select_platform(&index, &want, &reference.to_string())?.clone()]
                };
                for child in children {
                    let (b, d) = self.fetch_manifest(reference, child.digest().as_ref(), Some(&child), &scopes).await?;
                    let m = Manifest::parse(&b, Some(d.media_type().as_ref()), &format!("{reference} ({})", child.digest()))?;
                    if matches!(m, Manifest::Index(_)) {
                        return Err(RegistryError::Protocol { what, detail: format!("{} is an index inside an index, which kiln does not follow", child.digest()) });
                    }
                    stage(&ingest, &b, &d)?;
                    images.push((child, m));
                }
                if opts.all_platforms { desc } else { images[0].0.clone() }
            }
            image @ Manifest::Image(_) => {
                images.push((desc.clone(), image));
                desc
            }
        };

        let mut blobs: Vec<Descriptor> = Vec::new();
        for (_, m) in &images {
            for b in m.children() {
                if !blobs.iter().any(|x| x.digest() == b.digest()) && !ingest.has_intact_blob(&b) {
                    blobs.push(b);
                }
            }
        }
        let bytes_downloaded: u64 = blobs.iter().map(|b| b.size()).sum();
        let blobs_downloaded = blobs.len();
        // On the first failure the others stop, but every download is still
        // awaited, so no writer is left busy in tmp/ when pull returns.
        let abort = AtomicBool::new(false);
        let results: Vec<Result<()>> = futures_util::stream::iter(blobs.iter().map(|b| {
            let abort = &abort;
            let ingest = &ingest;
            let scopes = &scopes;
            async move {
                let r = self.fetch_blob(reference, b, ingest, scopes, abort).await;
                if r.is_err() {
                    abort.store(true, Ordering::SeqCst);
                }
                r
            }
        }))
        .buffer_unordered(self.options().max_concurrent_transfers.max(1))
        .collect()
        .await;
        // Completion order: the first error is the cause, later ones are cancellations.
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err);
        }
        ingest.commit()?;
        let name = reference.to_string();
        store.tag(&name, &tagged)?;
        Ok(PullReport { name, descriptor: tagged, blobs_downloaded, bytes_downloaded })
    }

    /// Downloads one blob of `reference`'s repository into `store`,
    /// verified against `blob` before it is stored.
    pub async fn pull_blob(&self, store: &Store, reference: &Reference, blob: &Descriptor) -> Result<()> {
        let scopes = [format!("repository:{}:pull", reference.repository)];
        let ingest = store.begin_ingest()?;
        self.fetch_blob(reference, blob, &ingest, &scopes, &AtomicBool::new(false)).await?;
        ingest.commit()?;
        Ok(())
    }

    /// Fetches a manifest by tag or digest and checks it against the digest
    /// it was asked for (or that the registry claims). Returns its bytes and descriptor.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        target: &str,
        expected: Option<&Descriptor>,
        scopes: &[String],
    ) -> Result<(Vec<u8>, Descriptor)> {
        let what = format!("manifest {}/{}:{target}", reference.registry, reference.repository).replace(":sha256:", "@sha256:");
        let req = Request {
            registry: &reference.registry,
            scopes,
            method: Method::GET,
            target: &format!("/v2/{}/manifests/{target}", reference.repository),
            headers: vec![("accept", media::MANIFEST_ACCEPT.to_string())],
            body: Body::Empty,
            what: &what,
        };
        let resp = self.send(&req).await?;
        let resp = client::check(self, resp, &[StatusCode::OK], &what, &reference.registry, &reference.repository).await?;
        if resp.content_length().is_some_and(|l| l > model::MAX_MANIFEST_SIZE) {
            return Err(RegistryError::TooLarge { what, limit: model::MAX_MANIFEST_SIZE });
        }
        let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let claimed = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|s| digest::parse(s).ok());
        // Content-Length may be absent (chunked) or lie: stop reading at the limit.
        let bytes = client::body_up_to(resp, model::MAX_MANIFEST_SIZE as usize)
            .await
            .map_err(|source| RegistryError::Transport { what: what.clone(), source })?
            .ok_or_else(|| RegistryError::TooLarge { what: what.clone(), limit: model::MAX_MANIFEST_SIZE })?;
        let actual = digest::of_bytes(&bytes);
        let wanted = match (expected, digest::parse(target).ok(), claimed) {
            (Some(d), _, _) => Some((d.digest().clone(), d.size())),
            (None, Some(d), _) => Some((d, bytes.len() as u64)),
            (None, None, Some(d)) => Some((d, bytes.len() as u64)),
            (None, None, None) => None,
        };
        if let Some((want, size)) = wanted {
            if want != actual || size != bytes.len() as u64 {
                return Err(RegistryError::DigestMismatch { what, expected: want.to_string(), actual: actual.to_string(), actual_size: bytes.len() as u64, expected_size: size });
            }
        }
        let media_type = media_type_of(&bytes)
            .or_else(|| expected.map(|d| d.media_type().to_string()))
            .or(content_type)
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        let desc = Descriptor::new(MediaType::from(media_type.as_str()), bytes.len() as u64, actual);
        Ok((bytes, desc))
    }

    /// Downloads one blob into the ingest, verifying size and digest;
    /// retries when the connection breaks mid-body.
    async fn fetch_blob(&self, reference: &Reference, blob: &Descriptor, ingest: &Ingest<'_>, scopes: &[String], abort: &AtomicBool) -> Result<()> {
        let what = format!("blob {} of {}", blob.digest(), reference.name());
        let cancelled = || RegistryError::Protocol { what: what.clone(), detail: "cancelled after another blob failed".into() };
        if abort.load(Ordering::SeqCst) {
            return Err(cancelled());
        }
        let target = format!("/v2/{}/blobs/{}", reference.repository, blob.digest());
        let observer = self.observer();
        observer.started(blob.digest(), blob.size());
        let mut attempt = 0;
        loop {
            if attempt > 0 {
                observer.restarted(blob.digest(), 0);
            }
            let req = Request { registry: &reference.registry, scopes, method: Method::GET, target: &target, headers: vec![], body: Body::Empty, what: &what };
            let resp = self.send(&req).await?;
            let resp = client::check(self, resp, &[StatusCode::OK], &what, &reference.registry, &reference.repository).await?;
            if resp.content_length().is_some_and(|l| l > blob.size()) {
                return Err(RegistryError::TooLarge { what, limit: blob.size() });
            }
            // Hashing and writing run on a blocking thread per blob, so
            // concurrent downloads use every core instead of this one task.
            let writer = ingest.blob_writer()?;
            let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
            let sink = tokio::task::spawn_blocking(move || {
                let mut writer = writer;
                while let Some(chunk) = rx.blocking_recv() {
                    writer.write_all(&chunk)?;
                }
                Ok::<_, std::io::Error>(writer)
            });
            let mut stream = resp.bytes_stream();
            let mut broken = None;
            let mut received: u64 = 0;
            let mut aborted = false;
            let mut too_large = false;
            let mut speed = LowSpeed::new(self.options());
            let mut too_slow = false;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(_) if abort.load(Ordering::SeqCst) => {
                        aborted = true;
                        break;
                    }
                    Ok(c) => {
                        received += c.len() as u64;
                        if received > blob.size() {
                            too_large = true;
                            break;
                        }
                        if speed.too_slow(received) {
                            too_slow = true;
                            break;
                        }
                        let len = c.len() as u64;
                        if tx.send(c).await.is_err() {
                            break; // the writer failed; its error is reported below
                        }
                        observer.advanced(blob.digest(), len);
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            drop(tx);
            let writer = sink
                .await
                .map_err(|e| RegistryError::Protocol { what: what.clone(), detail: format!("blob writer failed: {e}") })?
                .map_err(|e| StoreError::Io { path: "blob staging".into(), source: e })?;
            if aborted {
                return Err(cancelled());
            }
            if too_large {
                return Err(RegistryError::TooLarge { what, limit: blob.size() });
            }
            let failure = match (&broken, too_slow) {
                (Some(e), _) => Some((client::is_retryable(e), client::error_chain(e))),
                (None, true) => Some((true, speed.describe())),
                (None, false) => None,
            };
            if let Some((retryable, why)) = failure {
                if retryable && attempt + 1 < self.options().max_attempts {
                    attempt += 1;
                    tokio::time::sleep(self.options().initial_backoff * attempt).await;
                    continue;
                }
                return Err(RegistryError::Protocol { what, detail: format!("download broke off after {received} of {} bytes: {why}", blob.size()) });
            }
            let (media_type, digest, size) = (blob.media_type().clone(), blob.digest().clone(), blob.size());
            let committed = tokio::task::spawn_blocking(move || writer.commit(media_type, Some((&digest, size))))
                .await
                .map_err(|e| RegistryError::Protocol { what: what.clone(), detail: format!("blob writer failed: {e}") })?;
            return match committed {
                Ok(_) => {
                    observer.finished(blob.digest());
                    Ok(())
                }
                Err(StoreError::DigestMismatch { digest, actual, actual_size, expected_size }) => {
                    Err(RegistryError::DigestMismatch { what, expected: digest, actual, actual_size, expected_size })
                }
                Err(e) => Err(e.into()),
            };
        }
    }
}

fn stage(ingest: &Ingest<'_>, bytes: &[u8], desc: &Descriptor) -> Result<Digest> {
    Ok(ingest.put_bytes(bytes, desc.media_type().clone(), Some((desc.digest(), desc.size())))?.digest().clone())
}

/// Notices a download slower than `low_speed_bytes` per `low_speed_window`.
struct LowSpeed {
    min_bytes: u64,
    window: std::time::Duration,
    window_start: std::time::Instant,
    bytes_at_start: u64,
}

impl LowSpeed {
    fn new(opts: &client::ClientOptions) -> Self {
        LowSpeed {
            min_bytes: opts.low_speed_bytes,
            window: opts.low_speed_window,
            window_start: std::time::Instant::now(),
            bytes_at_start: 0,
        }
    }

    /// Whether the window that just ended brought too few bytes; starts the next one.
    fn too_slow(&mut self, received: u64) -> bool {
        if self.window_start.elapsed() < self.window {
            return false;
        }
        if received - self.bytes_at_start < self.min_bytes {
            return true;
        }
        self.window_start = std::time::Instant::now();
        self.bytes_at_start = received;
        false
    }

    fn describe(&self) -> String {
        format!("the server sent less than {} bytes in {:?}", self.min_bytes, self.window)
    }
}
