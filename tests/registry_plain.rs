//! Push and pull against a real docker-registry over plain HTTP on 127.0.0.1,
//! and interoperability with skopeo.

mod support;

use std::process::Command;

use kiln::oci::model::ModelError;
use kiln::oci::{Compression, Store};
use kiln::registry::{PullOptions, PushOptions, Reference, RegistryError};
use support::*;

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_and_pull_image_and_index_by_tag_and_digest_bit_identical() {
    let reg = RegistryServer::start(RegistrySetup::default());
    let src = temp_store();
    let image = build_image(&src.store, 1, &[300_000, 1_000, 50_000], "linux/amd64", Compression::Gzip);
    let client = client(None, None);

    let app = r(&format!("{}/kiln/app:v1", reg.addr));
    let report = client.push(&src.store, &image, &app, &PushOptions::default()).await.unwrap();
    assert_eq!((report.uploaded, report.skipped), (4, 0), "config + 3 layers uploaded");
    assert_eq!(report.digest, image.digest().to_string());

    // By tag.
    let by_tag = temp_store();
    let pulled = client.pull(&by_tag.store, &app, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.descriptor.digest(), image.digest());
    assert_eq!(pulled.name, app.to_string());
    assert_same_content(&src.store, &by_tag.store, &image);
    assert_eq!(by_tag.store.resolve(&app.to_string()).unwrap().digest(), image.digest());

    // By digest.
    let by_digest = temp_store();
    let dref = app.with_digest(image.digest().clone());
    let pulled = client.pull(&by_digest.store, &dref, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.descriptor.digest(), image.digest());
    assert_same_content(&src.store, &by_digest.store, &image);

    // Pushing again uploads nothing.
    let again = client.push(&src.store, &image, &app, &PushOptions::default()).await.unwrap();
    assert_eq!((again.uploaded, again.skipped), (0, 4));

    // Cross-repository mount.
    let other = r(&format!("{}/kiln/other:v1", reg.addr));
    let mounted = client.push(&src.store, &image, &other, &PushOptions { mount_from: Some("kiln/app".into()) }).await.unwrap();
    assert_eq!((mounted.mounted, mounted.uploaded), (4, 0));
    let check = temp_store();
    client.pull(&check.store, &other, &PullOptions::default()).await.unwrap();
    assert_same_content(&src.store, &check.store, &image);

    // Two-platform index.
    let amd = build_image(&src.store, 2, &[40_000, 2_000], "linux/amd64", Compression::Gzip);
    let arm = build_image(&src.store, 3, &[40_000, 3_000], "linux/arm64", Compression::Zstd);
    let index = build_index(&src.store, &[(amd.clone(), "linux/amd64"), (arm.clone(), "linux/arm64/v8")]);
    let multi = r(&format!("{}/kiln/multi:v1", reg.addr));
    client.push(&src.store, &index, &multi, &PushOptions::default()).await.unwrap();

    let all = PullOptions { all_platforms: true, ..Default::default() };
    let idx_tag = temp_store();
    let pulled = client.pull(&idx_tag.store, &multi, &all).await.unwrap();
    assert_eq!(pulled.descriptor.digest(), index.digest());
    assert_same_content(&src.store, &idx_tag.store, &index);

    let idx_digest = temp_store();
    client.pull(&idx_digest.store, &multi.with_digest(index.digest().clone()), &all).await.unwrap();
    assert_same_content(&src.store, &idx_digest.store, &index);

    // One platform out of the index: only its blobs, tag on its manifest.
    let one = temp_store();
    let arm64 = PullOptions { platform: Some("linux/arm64".parse().unwrap()), ..Default::default() };
    let pulled = client.pull(&one.store, &multi, &arm64).await.unwrap();
    assert_eq!(pulled.descriptor.digest(), arm.digest());
    assert_same_content(&src.store, &one.store, &arm);
    let img = one.store.image(&pulled.descriptor, None).unwrap();
    assert_eq!(img.platform().to_string(), "linux/arm64");
    assert_eq!(img.config.history().as_ref().map(|h| h.len()), Some(2));
    for layer in src.store.image(&amd, None).unwrap().manifest.layers() {
        assert!(!one.store.has_blob(layer.digest()), "amd64 layer must not be pulled");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_upload_round_trips() {
    let reg = RegistryServer::start(RegistrySetup::default());
    let src = temp_store();
    let image = build_image(&src.store, 9, &[700_000], "linux/arm/v7", Compression::Gzip);
    let chunked = kiln::registry::Client::new(kiln::registry::ClientOptions {
        auth_files: Vec::new(),
        chunk_size: 64 * 1024,
        ..Default::default()
    })
    .unwrap();
    let dest = r(&format!("{}/kiln/chunked:v1", reg.addr));
    let report = chunked.push(&src.store, &image, &dest, &PushOptions::default()).await.unwrap();
    assert_eq!(report.uploaded, 2);
    let back = temp_store();
    client(None, None).pull(&back.store, &dest, &PullOptions::default()).await.unwrap();
    assert_same_content(&src.store, &back.store, &image);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_tag_and_missing_platform_are_clear_errors_that_change_nothing() {
    let reg = RegistryServer::start(RegistrySetup::default());
    let src = temp_store();
    let amd = build_image(&src.store, 4, &[10_000], "linux/amd64", Compression::Gzip);
    let arm = build_image(&src.store, 5, &[10_000], "linux/arm64", Compression::Gzip);
    let index = build_index(&src.store, &[(amd, "linux/amd64"), (arm, "linux/arm64")]);
    let multi = r(&format!("{}/kiln/multi:v1", reg.addr));
    let client = client(None, None);
    client.push(&src.store, &index, &multi, &PushOptions::default()).await.unwrap();

    let dst = temp_store();
    let before = store_state(&dst.store);
    let err = client.pull(&dst.store, &r(&format!("{}/kiln/multi:nope", reg.addr)), &PullOptions::default()).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("kiln/multi") && msg.contains("nope") && msg.contains("not found"), "{msg}");

    let s390 = PullOptions { platform: Some("linux/s390x".parse().unwrap()), ..Default::default() };
    let err = client.pull(&dst.store, &multi, &s390).await.unwrap_err();
    assert!(matches!(err, RegistryError::Model(ModelError::NoMatchingPlatform { .. })), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("linux/s390x") && msg.contains("linux/amd64, linux/arm64"), "{msg}");
    assert_eq!(store_state(&dst.store), before, "a failed pull must leave the store as it was");
}

#[test]
fn skopeo_reads_what_kiln_pushes_and_kiln_reads_what_skopeo_pushes() {
    let skopeo = require("skopeo", "skopeo");
    let reg = RegistryServer::start(RegistrySetup::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = temp_store();
    let amd = build_image(&src.store, 6, &[20_000, 5_000], "linux/amd64", Compression::Gzip);
    let arm = build_image(&src.store, 7, &[20_000], "linux/arm64", Compression::Gzip);
    let index = build_index(&src.store, &[(amd.clone(), "linux/amd64"), (arm, "linux/arm64")]);
    let client = client(None, None);
    let img_ref = r(&format!("{}/kiln/interop:v1", reg.addr));
    let idx_ref = r(&format!("{}/kiln/interop:multi", reg.addr));
    rt.block_on(client.push(&src.store, &amd, &img_ref, &PushOptions::default())).unwrap();
    rt.block_on(client.push(&src.store, &index, &idx_ref, &PushOptions::default())).unwrap();

    // skopeo inspect sees kiln's digest and layers.
    let out = run(Command::new(&skopeo).args(["inspect", "--tls-verify=false", &format!("docker://{img_ref}")]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Digest"], amd.digest().to_string());
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(v["Architecture"], "amd64");
    let raw = run(Command::new(&skopeo).args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{idx_ref}")]));
    assert_eq!(raw.as_bytes(), src.store.read_blob(index.digest(), None).unwrap(), "index bytes unchanged");

    // skopeo copy of kiln's index (all platforms) into an OCI layout.
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("copied");
    run(Command::new(&skopeo).args(["copy", "--all", "--src-tls-verify=false", &format!("docker://{idx_ref}"), &format!("oci:{}:multi", layout.display())]));
    let copied: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(copied["manifests"][0]["digest"], index.digest().to_string());

    // skopeo pushes a Docker schema 2 conversion of kiln's image; kiln pulls it.
    let skopeo_ref = format!("{}/skopeo/converted:v2s2", reg.addr);
    run(Command::new(&skopeo).args([
        "copy",
        "--format",
        "v2s2",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{img_ref}"),
        &format!("docker://{skopeo_ref}"),
    ]));
    let dst = temp_store();
    let pulled = rt.block_on(client.pull(&dst.store, &r(&skopeo_ref), &PullOptions::default())).unwrap();
    assert_eq!(pulled.descriptor.media_type().to_string(), "application/vnd.docker.distribution.manifest.v2+json");
    let theirs = dst.store.image(&pulled.descriptor, None).unwrap();
    let ours = src.store.image(&amd, None).unwrap();
    assert_eq!(theirs.diff_ids(), ours.diff_ids());
    let their_layers: Vec<_> = theirs.manifest.layers().iter().map(|l| (l.digest().clone(), l.size())).collect();
    let our_layers: Vec<_> = ours.manifest.layers().iter().map(|l| (l.digest().clone(), l.size())).collect();
    assert_eq!(their_layers, our_layers, "skopeo keeps the compressed layers as they are");
}

#[test]
fn two_kiln_processes_pull_into_one_store_at_once() {
    let reg = RegistryServer::start(RegistrySetup::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = temp_store();
    let client = client(None, None);
    let mut refs = Vec::new();
    for i in 0..2u64 {
        let image = build_image(&src.store, 20 + i, &[2_000_000, 500_000], "linux/amd64", Compression::Gzip);
        let dest = r(&format!("{}/kiln/par{i}:v1", reg.addr));
        rt.block_on(client.push(&src.store, &image, &dest, &PushOptions::default())).unwrap();
        refs.push((dest, image));
    }
    let data = tempfile::tempdir().unwrap();
    let children: Vec<_> = refs
        .iter()
        .map(|(dest, _)| kiln(data.path()).args(["pull", &dest.to_string()]).output_async())
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let store = Store::open(data.path().join("images")).unwrap();
    for (dest, image) in &refs {
        assert_eq!(store.resolve(&dest.to_string()).unwrap().digest(), image.digest());
        assert_same_content(&src.store, &store, image);
    }
    assert_eq!(store_state(&store).2, 0, "no temp files left behind");
}

trait SpawnOutput {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }
}
