//! A fake registry that misbehaves in the ways real ones (and attackers) do:
//! wrong blob content, truncated blobs, missing blobs, a manifest that does
//! not match its digest, transient 503s. Each failure must be a clear error
//! and leave the store exactly as it was.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln::oci::{Compression, Descriptor};
use kiln::registry::{PullOptions, Reference, RegistryError};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fake {
    addr: String,
    layer: Descriptor,
    flaky_hits: Arc<AtomicUsize>,
    cdn_hits: Arc<AtomicUsize>,
}

/// Serves one image under several repositories; the repository name picks
/// how the first layer blob is (mis)served.
async fn start_fake(blobs: HashMap<String, Vec<u8>>, manifest: Vec<u8>, manifest_digest: String, layer: Descriptor) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let self_port = listener.local_addr().unwrap().port();
    let cdn_hits = Arc::new(AtomicUsize::new(0));
    let redirected_hits = cdn_hits.clone();
    let blobs = Arc::new(blobs);
    let manifest = Arc::new(manifest);
    let flaky_hits = Arc::new(AtomicUsize::new(0));
    let hits = flaky_hits.clone();
    let layer_digest = layer.digest().to_string();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (blobs, manifest, hits, layer_digest, manifest_digest, redirected) =
                (blobs.clone(), manifest.clone(), hits.clone(), layer_digest.clone(), manifest_digest.clone(), redirected_hits.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    if buf.first() == Some(&0x16) {
                        // A TLS handshake: answer as Go's plain HTTP server does.
                        let _ = sock.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n").await;
                        return;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = |status: &str, ctype: &str, len: usize, extra: &str| {
                    format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n")
                };
                let not_found = r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#;
                let mut out: Vec<u8> = Vec::new();
                if path == "/v2/" {
                    out.extend(reply("200 OK", "application/json", 2, "").bytes());
                    out.extend(b"{}");
                } else if let Some(digest) = path.strip_prefix("/cdn/") {
                    redirected.fetch_add(1, Ordering::SeqCst);
                    let b = blobs.get(digest).cloned().unwrap_or_default();
                    out.extend(reply("200 OK", "application/octet-stream", b.len(), "").bytes());
                    out.extend(b);
                } else if let Some(rest) = path.strip_prefix("/v2/bad/") {
                    let (repo, rest) = rest.split_once('/').unwrap();
                    if let Some(status) = rest.strip_prefix("manifests/").and_then(|_| endless_status(repo)) {
                        // A chunked body that never ends, as a hostile server sends it.
                        let head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = [format!("{:x}\r\n", 1 << 16).into_bytes(), vec![b'{'; 1 << 16], b"\r\n".to_vec()].concat();
                        while sock.write_all(&chunk).await.is_ok() {}
                        return;
                    }
                    if let Some(reference) = rest.strip_prefix("manifests/") {
                        if reference == "v1" || reference == manifest_digest {
                            let body: Vec<u8> = if repo == "lying-manifest" {
                                // A different document than the digest asked for.
                                let mut m = manifest.to_vec();
                                m.push(b'\n');
                                m
                            } else {
                                manifest.to_vec()
                            };
                            out.extend(reply("200 OK", "application/vnd.oci.image.manifest.v1+json", body.len(), "").bytes());
                            out.extend(body);
                        } else {
                            let e = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                            out.extend(reply("404 Not Found", "application/json", e.len(), "").bytes());
                            out.extend(e.bytes());
                        }
                    } else if let Some(digest) = rest.strip_prefix("blobs/").filter(|d| repo == "drip" && *d == layer_digest) {
                        // Promises the blob, then sends a byte every 100 ms.
                        let b = blobs.get(digest).cloned().unwrap_or_default();
                        if sock.write_all(reply("200 OK", "application/octet-stream", b.len(), "").as_bytes()).await.is_err() {
                            return;
                        }
                        for byte in b {
                            if sock.write_all(&[byte]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        return;
                    } else if let Some(digest) = rest.strip_prefix("blobs/") {
                        let is_layer = digest == layer_digest;
                        let mode = if is_layer { repo } else { "good" };
                        match (mode, blobs.get(digest).cloned()) {
                            ("missing", _) | (_, None) => {
                                out.extend(reply("404 Not Found", "application/json", not_found.len(), "").bytes());
                                out.extend(not_found.bytes());
                            }
                            ("wrong-digest", Some(mut b)) => {
                                b[10] ^= 0xff;
                                out.extend(reply("200 OK", "application/octet-stream", b.len(), "").bytes());
                                out.extend(b);
                            }
                            ("truncated", Some(b)) => {
                                // Promise the whole blob, send half, hang up.
                                out.extend(reply("200 OK", "application/octet-stream", b.len(), "").bytes());
                                out.extend(&b[..b.len() / 2]);
                            }
                            ("short", Some(b)) => {
                                let half = &b[..b.len() / 2];
                                out.extend(reply("200 OK", "application/octet-stream", half.len(), "").bytes());
                                out.extend(half);
                            }
                            ("redirect", Some(_)) => {
                                // Like a registry handing blobs to a CDN on another host name.
                                let port = self_port;
                                let loc = format!("Location: http://localhost:{port}/cdn/{digest}\r\n");
                                out.extend(reply("307 Temporary Redirect", "text/plain", 0, &loc).bytes());
                            }
                            ("flaky", Some(_)) if hits.fetch_add(1, Ordering::SeqCst) < 2 => {
                                out.extend(reply("503 Service Unavailable", "text/plain", 4, "").bytes());
                                out.extend(b"busy");
                            }
                            (_, Some(b)) => {
                                out.extend(reply("200 OK", "application/octet-stream", b.len(), "").bytes());
                                out.extend(b);
                            }
                        }
                    }
                }
                if out.is_empty() {
                    out.extend(reply("404 Not Found", "text/plain", 0, "").bytes());
                }
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Fake { addr, layer, flaky_hits, cdn_hits }
}

async fn fake_with_image() -> (TempStore, Descriptor, Fake) {
    let src = temp_store();
    let image = build_image(&src.store, 41, &[200_000, 3_000], "linux/amd64", Compression::Gzip);
    let mut blobs = HashMap::new();
    for d in src.store.closure(&image).unwrap() {
        blobs.insert(d.digest().to_string(), src.store.read_blob(d.digest(), None).unwrap());
    }
    let manifest = src.store.read_blob(image.digest(), None).unwrap();
    let layer = src.store.image(&image, None).unwrap().manifest.layers()[0].clone();
    let fake = start_fake(blobs, manifest, image.digest().to_string(), layer).await;
    (src, image, fake)
}

/// Repositories whose manifest requests get an endless body, with this status.
fn endless_status(repo: &str) -> Option<&'static str> {
    match repo {
        "endless-manifest" => Some("200 OK"),
        "endless-error" => Some("404 Not Found"),
        _ => None,
    }
}

fn pull_ref(fake: &Fake, repo: &str) -> Reference {
    Reference::parse(&format!("{}/bad/{repo}:v1", fake.addr)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_corrupt_answer_is_a_clear_error_and_the_store_is_untouched() {
    let (_src, image, fake) = fake_with_image().await;
    let client = client(None, None);
    let dst = temp_store();
    let before = store_state(&dst.store);
    let layer = fake.layer.digest().to_string();

    let err = client.pull(&dst.store, &pull_ref(&fake, "wrong-digest"), &PullOptions::default()).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer), "{err}");
    assert_eq!(store_state(&dst.store), before);

    let err = client.pull(&dst.store, &pull_ref(&fake, "truncated"), &PullOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains(&layer) && err.to_string().contains("broke off"), "{err}");
    assert_eq!(store_state(&dst.store), before);

    let err = client.pull(&dst.store, &pull_ref(&fake, "short"), &PullOptions::default()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }) && msg.contains(&format!("{} bytes", fake.layer.size() / 2)), "{msg}");
    assert_eq!(store_state(&dst.store), before);

    let err = client.pull(&dst.store, &pull_ref(&fake, "missing"), &PullOptions::default()).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&layer) && err.to_string().contains("blob unknown"), "{err}");
    assert_eq!(store_state(&dst.store), before);

    let lying = pull_ref(&fake, "lying-manifest").with_digest(image.digest().clone());
    let err = client.pull(&dst.store, &lying, &PullOptions::default()).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert_eq!(store_state(&dst.store), before);

    let err = client.pull(&dst.store, &Reference::parse(&format!("{}/bad/missing:v2", fake.addr)).unwrap(), &PullOptions::default()).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }) && err.to_string().contains("manifest unknown"), "{err}");
    assert_eq!(store_state(&dst.store), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_bodies_are_cut_off_at_their_limit() {
    let (_src, _image, fake) = fake_with_image().await;
    let client = client(None, None);
    let dst = temp_store();
    let before = store_state(&dst.store);
    let pull = |repo: &'static str| {
        let (client, dst, reference) = (&client, &dst, pull_ref(&fake, repo));
        async move {
            let opts = PullOptions::default();
            let pulling = client.pull(&dst.store, &reference, &opts);
            tokio::time::timeout(std::time::Duration::from_secs(60), pulling).await.expect("kiln stops reading at the limit")
        }
    };
    let err = pull("endless-manifest").await.unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { limit, .. } if limit == 8 << 20), "{err}");
    let err = pull("endless-error").await.unwrap_err();
    assert!(err.to_string().contains("over 1 MiB"), "{err}");
    assert_eq!(store_state(&dst.store), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_that_drips_in_is_given_up_on() {
    let (_src, _image, fake) = fake_with_image().await;
    let client = kiln::registry::Client::new(kiln::registry::ClientOptions {
        auth_files: Vec::new(),
        max_attempts: 2,
        initial_backoff: std::time::Duration::from_millis(50),
        low_speed_bytes: 1024,
        low_speed_window: std::time::Duration::from_secs(1),
        ..Default::default()
    })
    .unwrap();
    let dst = temp_store();
    let before = store_state(&dst.store);
    let (reference, opts) = (pull_ref(&fake, "drip"), PullOptions::default());
    let pulling = client.pull(&dst.store, &reference, &opts);
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), pulling).await.expect("gives up within seconds").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&fake.layer.digest().to_string()) && msg.contains("less than 1024 bytes in 1s"), "{msg}");
    assert_eq!(store_state(&dst.store), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_repairs_a_damaged_blob_in_the_store() {
    let (src, image, fake) = fake_with_image().await;
    let client = client(None, None);
    let dst = temp_store();
    let good = pull_ref(&fake, "good");
    client.pull(&dst.store, &good, &PullOptions::default()).await.unwrap();
    // Same size, one byte flipped: a file that exists is not enough.
    let path = dst.store.blob_path(fake.layer.digest()).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let report = client.pull(&dst.store, &good, &PullOptions::default()).await.unwrap();
    assert_eq!(report.blobs_downloaded, 1, "only the damaged blob is fetched again");
    assert_same_content(&src.store, &dst.store, &image);
    let report = client.pull(&dst.store, &good, &PullOptions::default()).await.unwrap();
    assert_eq!(report.blobs_downloaded, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_503s_are_retried() {
    let (src, image, fake) = fake_with_image().await;
    let dst = temp_store();
    client(None, None).pull(&dst.store, &pull_ref(&fake, "flaky"), &PullOptions::default()).await.unwrap();
    assert_eq!(fake.flaky_hits.load(Ordering::SeqCst), 3, "two 503s, then success");
    assert_same_content(&src.store, &dst.store, &image);
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_redirects_to_another_host_are_followed() {
    let (src, image, fake) = fake_with_image().await;
    let dst = temp_store();
    client(None, None).pull(&dst.store, &pull_ref(&fake, "redirect"), &PullOptions::default()).await.unwrap();
    assert_eq!(fake.cdn_hits.load(Ordering::SeqCst), 1, "the layer came from the redirect target");
    assert_same_content(&src.store, &dst.store, &image);
}
