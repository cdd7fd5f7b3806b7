#![cfg(unix)]
//! Byte progress of pulls and pushes: what a registry client tells its
//! observer, and what `kiln pull` and `kiln push` print without a terminal.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln::oci::{Compression, Descriptor, Digest, Store};
use kiln::registry::{Client, ClientOptions, PullOptions, PushOptions, Reference, TransferObserver};
use support::*;

/// Per blob: its total, the bytes it has reached, how often it started and finished.
#[derive(Default)]
struct Recorder(Mutex<HashMap<String, Seen>>);

#[derive(Default, Debug, Clone, PartialEq)]
struct Seen {
    total: u64,
    current: u64,
    starts: usize,
    finishes: usize,
    advanced_after_finish: bool,
}

impl TransferObserver for Recorder {
    fn started(&self, digest: &Digest, total: u64) {
        let mut seen = self.0.lock().unwrap();
        let s = seen.entry(digest.to_string()).or_default();
        s.total = total;
        s.starts += 1;
    }
    fn advanced(&self, digest: &Digest, bytes: u64) {
        let mut seen = self.0.lock().unwrap();
        let s = seen.get_mut(digest.as_ref()).expect("advanced before started");
        s.current += bytes;
        s.advanced_after_finish |= s.finishes > 0;
    }
    fn restarted(&self, digest: &Digest, offset: u64) {
        self.0.lock().unwrap().get_mut(digest.as_ref()).expect("restarted before started").current = offset;
    }
    fn finished(&self, digest: &Digest) {
        self.0.lock().unwrap().get_mut(digest.as_ref()).expect("finished before started").finishes += 1;
    }
}

impl Recorder {
    fn take(&self) -> HashMap<String, Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The config and layers of `image` in `store`.
fn blobs_of(store: &Store, image: &Descriptor) -> Vec<Descriptor> {
    store.closure(image).unwrap().into_iter().filter(|d| !kiln::oci::media::is_manifest(d.media_type().as_ref())).collect()
}

fn assert_each_blob_moved_once(seen: &HashMap<String, Seen>, blobs: &[Descriptor]) {
    assert_eq!(seen.len(), blobs.len(), "{seen:?}");
    for b in blobs {
        let s = &seen[b.digest().as_ref()];
        let want = Seen { total: b.size(), current: b.size(), starts: 1, finishes: 1, advanced_after_finish: false };
        assert_eq!(s, &want, "{}", b.digest());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn observer_sees_every_blob_byte_of_a_push_and_a_pull() {
    let reg = RegistryServer::start(RegistrySetup::default());
    let src = temp_store();
    let image = build_image(&src.store, 7, &[700_000, 1_000, 250_000, 90_000], "linux/amd64", Compression::Gzip);
    let blobs = blobs_of(&src.store, &image);
    assert_eq!(blobs.len(), 5);
    let recorder = Arc::new(Recorder::default());
    // Chunks smaller than the big layers: uploads of several PATCHes count as one transfer.
    let options = ClientOptions { chunk_size: 100_000, max_attempts: 3, auth_files: Vec::new(), ..Default::default() };
    let client = Client::new(options).unwrap().with_observer(recorder.clone());

    let app = Reference::parse(&format!("{}/kiln/progress:v1", reg.addr)).unwrap();
    client.push(&src.store, &image, &app, &PushOptions::default()).await.unwrap();
    assert_each_blob_moved_once(&recorder.take(), &blobs);

    // Blobs the registry has already are not transfers.
    client.push(&src.store, &image, &app, &PushOptions::default()).await.unwrap();
    assert!(recorder.take().is_empty());

    // The pull downloads concurrently (several transfers at once).
    let dest = temp_store();
    client.pull(&dest.store, &app, &PullOptions::default()).await.unwrap();
    assert_each_blob_moved_once(&recorder.take(), &blobs);
}

#[test]
fn pull_and_push_without_a_terminal_print_one_done_line_per_blob() {
    let reg = RegistryServer::start(RegistrySetup::default());
    let source = tempfile::tempdir().unwrap();
    let name = format!("{}/kiln/cli-progress:v1", reg.addr);
    let blobs = {
        let store = Store::open(source.path().join("images")).unwrap();
        let image = build_image(&store, 9, &[400_000, 3_000], "linux/amd64", Compression::Gzip);
        store.tag(&name, &image).unwrap();
        blobs_of(&store, &image)
    };
    let done_lines = |stderr: &str| -> Vec<String> { stderr.lines().filter(|l| l.ends_with(" done")).map(str::to_string).collect() };
    let check = |what: &str, out: &std::process::Output| {
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let done = done_lines(&stderr);
        assert_eq!(done.len(), blobs.len(), "{what}: {stderr}");
        for b in &blobs {
            // BuildKit's plain style: `#1 sha256:... 400.1kB / 400.1kB 0.0s done`.
            let line = done.iter().find(|l| l.contains(b.digest().as_ref())).unwrap_or_else(|| panic!("{what}: no line for {}: {stderr}", b.digest()));
            let size = kiln::cli::images::human_size(b.size());
            assert!(line.starts_with(&format!("#1 {} {size} / {size} ", b.digest())), "{what}: {line}");
        }
        assert!(!stderr.contains('\x1b'), "{what}: no terminal codes without a terminal: {stderr:?}");
    };

    let push = kiln(source.path()).args(["push", "--progress", "plain", &name]).output().unwrap();
    check("push", &push);
    assert!(String::from_utf8_lossy(&push.stdout).starts_with(&format!("Pushed {name} ")));

    // Without --progress and without a terminal: plain, as buildx's auto.
    let target = tempfile::tempdir().unwrap();
    let pull = kiln(target.path()).env_remove("BUILDKIT_PROGRESS").args(["pull", &name]).output().unwrap();
    check("pull", &pull);

    // -q: the name alone, no progress.
    let again = tempfile::tempdir().unwrap();
    let quiet = kiln(again.path()).args(["pull", "-q", &name]).output().unwrap();
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stdout), format!("{name}\n"));
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
}

/// The number BuildKit's plain output gives the step named `name`.
fn step_number(stderr: &str, name: &str) -> String {
    let line = stderr.lines().find(|l| l.ends_with(name) && l.starts_with('#')).unwrap_or_else(|| panic!("no step {name}: {stderr}"));
    line.split(' ').next().unwrap().to_string()
}

#[test]
fn a_build_shows_its_from_pull_and_push_blobs_under_their_steps() {
    let reg = RegistryServer::start(RegistrySetup::default());
    let base = format!("{}/kiln/progress-base:1", reg.addr);
    let built = format!("{}/kiln/progress-built:1", reg.addr);
    let publisher = support::build_env::Env::new();
    publisher.import_busybox("arm64", &base);
    publisher.ok(&["push", "-q", &base]);
    let layer = {
        let store = Store::open(publisher.path("data/images")).unwrap();
        let image = store.resolve(&base).unwrap();
        store.read_manifest(&image).map(|(_, bytes)| {
            let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            manifest["layers"][0]["digest"].as_str().unwrap().to_string()
        })
        .unwrap()
    };

    // No RUN: nothing boots a VM.
    let builder = support::build_env::Env::new();
    builder.write("Dockerfile", &format!("FROM {base}\nLABEL progress=shown\n"));
    let cache = format!("{}/kiln/progress-cache:1", reg.addr);
    let cache_to = format!("type=registry,ref={cache},mode=max");
    let ctx = builder.ctx();
    let args = ["build", "--platform", "linux/arm64", "--progress", "plain", "--push", "-t", &built, "--cache-to", &cache_to, ctx.to_str().unwrap()];
    let out = builder.ok(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pull = step_number(&stderr, &format!("[internal] pulling {base} (linux/arm64)"));
    assert!(stderr.lines().any(|l| l.starts_with(&format!("{pull} {layer} ")) && l.ends_with(" done")), "{stderr}");
    let push = step_number(&stderr, &format!("pushing {built}"));
    // The layer is not in the new repository yet: uploaded, with the new config.
    let pushed = stderr.lines().filter(|l| l.starts_with(&format!("{push} sha256:")) && l.ends_with(" done")).count();
    assert_eq!(pushed, 2, "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with(&format!("{push} DONE "))), "{stderr}");
    // The cache export uploads its records' config (its layers are mounted from the push).
    let export = step_number(&stderr, &format!("exporting cache to {cache}"));
    assert!(stderr.lines().any(|l| l.starts_with(&format!("{export} sha256:")) && l.ends_with(" done")), "{stderr}");
    builder.assert_tmp_empty();
}
