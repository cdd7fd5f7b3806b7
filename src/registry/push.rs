//! Pushing: blobs first (skipping those the registry has, mounting from
//! another repository when asked, monolithic or chunked upload), then child
//! manifests by digest, then the root manifest or index by tag.

use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::Descriptor;
use reqwest::{Method, StatusCode};

use crate::oci::digest;
use crate::oci::media;
use crate::oci::store::Store;
use crate::registry::client::{self, Body, Client, Request};
use crate::registry::reference::Reference;
use crate::registry::transfer::UploadMeter;
use crate::registry::RegistryError;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// A repository on the same registry that may already hold the blobs;
    /// they are mounted from it instead of uploaded.
    pub mount_from: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub mounted: usize,
    pub skipped: usize,
    /// Digest of the pushed root manifest or index.
    pub digest: String,
}

enum BlobOutcome {
    Skipped,
    Mounted,
    Uploaded(u64),
}

enum BlobStart {
    Done(BlobOutcome),
    /// The registry opened an upload session at this URL.
    Upload(String),
}

impl Client {
    /// Pushes the image or index `source` from `store` to `dest`.
    pub async fn push(&self, store: &Store, source: &Descriptor, dest: &Reference, opts: &PushOptions) -> Result<PushReport> {
        let mut scopes = vec![format!("repository:{}:pull,push", dest.repository)];
        if let Some(from) = &opts.mount_from {
            scopes.push(format!("repository:{from}:pull"));
        }
        if let Some(d) = &dest.digest {
            if d != source.digest() {
                return Err(RegistryError::Protocol {
                    what: format!("pushing to {dest}"),
                    detail: format!("the reference names digest {d} but the image is {}", source.digest()),
                });
            }
        }
        // Children come before parents, so the registry never sees a manifest before its blobs.
        let closure = store.closure(source)?;
        let (manifests, blobs): (Vec<_>, Vec<_>) = closure.into_iter().partition(|d| {
            let mt = d.media_type().as_ref();
            media::is_index(mt) || media::is_manifest(mt)
        });
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(blobs.iter().map(|b| self.push_blob(store, b, dest, opts, &scopes)))
            .buffer_unordered(self.options().max_concurrent_transfers.max(1))
            .try_collect()
            .await?;
        let mut report = PushReport::default();
        for o in outcomes {
            match o {
                BlobOutcome::Skipped => report.skipped += 1,
                BlobOutcome::Mounted => report.mounted += 1,
                BlobOutcome::Uploaded(n) => {
                    report.uploaded += 1;
                    report.uploaded_bytes += n;
                }
            }
        }
        for m in &manifests {
            let is_root = m.digest() == source.digest();
            let target = match (&dest.tag, is_root) {
                (Some(tag), true) => tag.clone(),
                _ => m.digest().to_string(),
            };
            self.put_manifest(store, m, dest, &target, &scopes).await?;
        }
        report.digest = source.digest().to_string();
        Ok(report)
    }

    async fn put_manifest(&self, store: &Store, m: &Descriptor, dest: &Reference, target: &str, scopes: &[String]) -> Result<()> {
        let bytes = store.read_blob(m.digest(), Some(m.size()))?;
        self.put_manifest_bytes(bytes, m, dest, target, scopes).await
    }

    /// Uploads a manifest or index (`bytes`, described by `m`) to `dest`'s
    /// repository under `target`, a tag or its digest, and checks that the
    /// registry stored it under the digest it has here.
    pub async fn put_manifest_bytes(&self, bytes: Vec<u8>, m: &Descriptor, dest: &Reference, target: &str, scopes: &[String]) -> Result<()> {
        let what = format!("uploading manifest {} to {}", m.digest(), dest.name());
        let req = Request {
            registry: &dest.registry,
            scopes,
            method: Method::PUT,
            target: &format!("/v2/{}/manifests/{target}", dest.repository),
            headers: vec![("content-type", m.media_type().to_string())],
            body: Body::Bytes(bytes.into()),
            what: &what,
        };
        let resp = self.send(&req).await?;
        let resp = client::check(self, resp, &[StatusCode::CREATED, StatusCode::OK], &what, &dest.registry, &dest.repository).await?;
        if let Some(d) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            if let Ok(d) = digest::parse(d) {
                if &d != m.digest() {
                    return Err(RegistryError::Protocol { what, detail: format!("the registry stored it as {d}") });
                }
            }
        }
        Ok(())
    }

    /// Copies one blob from the repository `from` to `to`: nothing when `to`
    /// has it, a cross-repository mount on the same registry, otherwise
    /// through `store` (downloaded and verified there first, unless it is
    /// already there) and uploaded.
    pub async fn copy_blob(&self, store: &Store, blob: &Descriptor, from: &Reference, to: &Reference) -> Result<()> {
        let same_registry = from.registry == to.registry;
        let mut scopes = vec![format!("repository:{}:pull,push", to.repository)];
        if from.repository != to.repository || !same_registry {
            scopes.push(format!("repository:{}:pull", from.repository));
        }
        let mount_from = same_registry.then(|| from.repository.clone());
        let opts = PushOptions { mount_from };
        if let BlobStart::Upload(location) = self.start_blob(blob, to, &opts, &scopes).await? {
            if !store.has_intact_blob(blob) {
                self.pull_blob(store, from, blob).await?;
            }
            self.upload_blob(store, blob, to, location, &scopes).await?;
        }
        Ok(())
    }

    async fn push_blob(&self, store: &Store, blob: &Descriptor, dest: &Reference, opts: &PushOptions, scopes: &[String]) -> Result<BlobOutcome> {
        match self.start_blob(blob, dest, opts, scopes).await? {
            BlobStart::Done(outcome) => Ok(outcome),
            BlobStart::Upload(location) => Ok(BlobOutcome::Uploaded(self.upload_blob(store, blob, dest, location, scopes).await?)),
        }
    }

    /// The first half of a blob push: skipped when `dest` has the blob,
    /// mounted when `opts` names a repository that has it, otherwise an
    /// upload session is opened.
    async fn start_blob(&self, blob: &Descriptor, dest: &Reference, opts: &PushOptions, scopes: &[String]) -> Result<BlobStart> {
        let what = format!("uploading blob {} to {}", blob.digest(), dest.name());
        let repo = &dest.repository;
        let reg = &dest.registry;
        let blob_url = format!("/v2/{repo}/blobs/{}", blob.digest());
        let head = Request { registry: reg, scopes, method: Method::HEAD, target: &blob_url, headers: vec![], body: Body::Empty, what: &what };
        let resp = self.send(&head).await?;
        if resp.status() == StatusCode::OK {
            return Ok(BlobStart::Done(BlobOutcome::Skipped));
        }
        client::check(self, resp, &[StatusCode::NOT_FOUND], &what, reg, repo).await?;

        let start = match &opts.mount_from {
            Some(from) => format!("/v2/{repo}/blobs/uploads/?mount={}&from={from}", blob.digest()),
            None => format!("/v2/{repo}/blobs/uploads/"),
        };
        let post = Request { registry: reg, scopes, method: Method::POST, target: &start, headers: vec![], body: Body::Empty, what: &what };
        let resp = self.send(&post).await?;
        let resp = client::check(self, resp, &[StatusCode::CREATED, StatusCode::ACCEPTED], &what, reg, repo).await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(BlobStart::Done(BlobOutcome::Mounted));
        }
        let base = self.base_url(reg).await?;
        Ok(BlobStart::Upload(client::resolve_location(&base, &resp, &what)?))
    }

    /// The second half: the blob's bytes from `store` into the upload
    /// session at `location`. Returns the bytes sent.
    async fn upload_blob(&self, store: &Store, blob: &Descriptor, dest: &Reference, mut location: String, scopes: &[String]) -> Result<u64> {
        let what = format!("uploading blob {} to {}", blob.digest(), dest.name());
        let repo = &dest.repository;
        let reg = &dest.registry;
        let base = self.base_url(reg).await?;
        let path = store.blob_path(blob.digest())?;
        // Re-check the stored blob before it leaves the machine.
        std::io::copy(&mut store.get_blob(blob)?, &mut std::io::sink())
            .map_err(|e| RegistryError::Protocol { what: what.clone(), detail: e.to_string() })?;
        let size = blob.size();
        let chunk = self.options().chunk_size.max(1);
        let octet = ("content-type", "application/octet-stream".to_string());
        let meter = |offset| Some(UploadMeter::new(self.observer().clone(), blob.digest().clone(), offset));
        self.observer().started(blob.digest(), size);
        // Chunked: PATCH every chunk, then an empty PUT closes the upload.
        // Monolithic: one PUT carries the whole blob.
        let final_body = if size > chunk {
            let mut offset = 0;
            while offset < size {
                let len = chunk.min(size - offset);
                let patch = Request {
                    registry: reg,
                    scopes,
                    method: Method::PATCH,
                    target: &location,
                    headers: vec![octet.clone(), ("content-range", format!("{offset}-{}", offset + len - 1))],
                    body: Body::File { path: path.clone(), offset, len, meter: meter(offset) },
                    what: &what,
                };
                let resp = self.send(&patch).await?;
                let resp = client::check(self, resp, &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT], &what, reg, repo).await?;
                location = client::resolve_location(&base, &resp, &what)?;
                offset += len;
            }
            Body::Empty
        } else {
            Body::File { path, offset: 0, len: size, meter: meter(0) }
        };
        let put = Request {
            registry: reg,
            scopes,
            method: Method::PUT,
            target: &client::with_query(&location, "digest", blob.digest().as_ref())?,
            headers: vec![octet],
            body: final_body,
            what: &what,
        };
        let resp = self.send(&put).await?;
        client::check(self, resp, &[StatusCode::CREATED, StatusCode::NO_CONTENT], &what, reg, repo).await?;
        self.observer().finished(blob.digest());
        Ok(size)
    }
}
