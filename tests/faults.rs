#![cfg(unix)]
//! Fault injection: kiln is killed (SIGKILL, no chance to clean up) during a
//! snapshot, a pull and an export; the guest kernel panics; the disk fills
//! up under the store and under an export; two builds share one store, cache
//! and cache mount at once. After each fault: no QEMU left, no temp files,
//! no tag, the cache intact, and the next command works.
//!
//! The full-disk cases mount small tmpfs file systems, so they need root (as
//! the CI machines have); they fail, never skip, without it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::build_env::Env;
use support::processes::{children_of, wait_gone};

const BUSYBOX: &str = "kiln.local/busybox:test";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn build(env: &Env, ctx: &Path, extra: &[&str]) -> Output {
    env.kiln().args(["build", "--progress", "plain", "--platform", "linux/arm64"]).args(extra).arg(ctx).output().unwrap()
}

fn spawn_build(env: &Env, ctx: &Path, extra: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = env
        .kiln()
        .args(["build", "--progress", "plain", "--platform", "linux/arm64"])
        .args(extra)
        .arg(ctx)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    (child, rx)
}

/// Waits (up to `within`) for `path` to hold an entry whose name passes `pick`.
fn wait_for_entry(path: &Path, within: Duration, pick: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let found = std::fs::read_dir(path).into_iter().flatten().flatten().any(|e| pick(&e.file_name().to_string_lossy()));
        if found {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn entries(path: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// SIGKILL, then every child it had (QEMU) must be gone within 10 s.
fn kill_9(child: &mut Child) {
    let helpers = children_of(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    wait_gone(&helpers, Duration::from_secs(10));
}

fn store_tmp(env: &Env) -> PathBuf {
    env.path("data/images/tmp")
}

/// A rootfs tar of one incompressible file of `size` bytes.
fn noise_rootfs(path: &Path, size: usize) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "noise", &support::noise(size, 7)[..]).unwrap();
    builder.finish().unwrap();
}

#[test]
fn kill_9_during_a_snapshot_leaves_no_vm_no_tag_no_temp_file_and_the_cache_intact() {
    let env = Env::with_private_cache();
    env.import_busybox("arm64", BUSYBOX);
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo kept > /kept\n"));
    let out = build(&env, &env.ctx(), &["-t", "test/kept:1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // 160 MB that gzip cannot shrink: the snapshot takes seconds.
    env.write(
        "Dockerfile",
        &format!(
            "FROM {BUSYBOX}\nRUN echo kept > /kept\nRUN head -c 8000000 /dev/urandom > /n && for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do cat /n; done > /big && echo written\n"
        ),
    );
    let (mut child, lines) = spawn_build(&env, &env.ctx(), &["-t", "test/killed:1"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !lines.recv_timeout(Duration::from_secs(120)).expect("kiln ended before the RUN finished").ends_with(" written") {
        assert!(Instant::now() < deadline);
    }
    // The snapshot writes the layer into the store's tmp/ as it reads the disk.
    assert!(wait_for_entry(&store_tmp(&env), Duration::from_secs(60), |_| true), "no layer was being written");
    kill_9(&mut child);
    assert!(!entries(&store_tmp(&env)).is_empty(), "killed mid-write, the partial layer is still there");

    // The next kiln sweeps it; nothing was tagged.
    assert!(!env.tags().contains("test/killed"));
    assert_eq!(entries(&store_tmp(&env)), Vec::<String>::new(), "the partial layer is swept");
    // The cache still answers for the step before, and the killed step runs again.
    let out = build(&env, &env.ctx(), &["-t", "test/killed:2"]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("#2 CACHED"), "the earlier step comes from the cache: {log}");
    assert!(log.contains(" written"), "the killed step ran again: {log}");
    env.assert_tmp_empty();
}

/// A registry serving one image from an OCI layout directory; while `stall`
/// is set it sends half of `stall_blob` and then nothing.
struct FakeRegistry {
    addr: String,
    stall: Arc<AtomicBool>,
}

impl FakeRegistry {
    fn start(layout: &Path, stall_blob: String) -> FakeRegistry {
        let mut blobs = HashMap::new();
        for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            blobs.insert(format!("sha256:{}", entry.file_name().to_string_lossy()), std::fs::read(entry.path()).unwrap());
        }
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stall = Arc::new(AtomicBool::new(true));
        let stalling = stall.clone();
        let blobs = Arc::new(blobs);
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let (blobs, manifest, stall_blob, stalling) = (blobs.clone(), manifest.clone(), stall_blob.clone(), stalling.clone());
                std::thread::spawn(move || serve(sock, &blobs, &manifest, &stall_blob, &stalling));
            }
        });
        FakeRegistry { addr, stall }
    }
}

fn serve(mut sock: std::net::TcpStream, blobs: &HashMap<String, Vec<u8>>, manifest: &str, stall_blob: &str, stall: &AtomicBool) {
    let mut reader = BufReader::new(sock.try_clone().unwrap());
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 2 {
            line.clear();
        }
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let name = path.rsplit('/').next().unwrap_or("");
        let (body, ctype): (&[u8], &str) = if path == "/v2/" {
            (b"{}", "application/json")
        } else if path.contains("/manifests/") {
            (&blobs[manifest], "application/vnd.oci.image.manifest.v1+json")
        } else if let Some(blob) = blobs.get(name) {
            (blob, "application/octet-stream")
        } else {
            let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\n\r\n",
            body.len(),
            if path.contains("/manifests/") { manifest } else { name }
        );
        if sock.write_all(head.as_bytes()).is_err() || method == "HEAD" {
            continue;
        }
        if name == stall_blob && stall.load(Ordering::SeqCst) {
            let _ = sock.write_all(&body[..body.len() / 2]);
            let _ = sock.flush();
            std::thread::sleep(Duration::from_secs(600));
            return;
        }
        if sock.write_all(body).is_err() {
            return;
        }
    }
}

#[test]
fn kill_9_during_a_pull_leaves_no_tag_and_the_next_pull_completes() {
    let source = Env::new();
    let rootfs = source.path("noise.tar");
    noise_rootfs(&rootfs, 4 << 20);
    source.ok(&["import", "--platform", "linux/arm64", rootfs.to_str().unwrap(), "noise:1"]);
    let layout = source.path("layout");
    source.ok(&["save", "--format", "oci-dir", "-o", layout.to_str().unwrap(), "noise:1"]);
    let manifest_digest = {
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"].as_str().unwrap().to_string()
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let layer_size = manifest["layers"][0]["size"].as_u64().unwrap();
    let registry = FakeRegistry::start(&layout, layer.clone());
    let reference = format!("{}/test/noise:1", registry.addr);

    let env = Env::new();
    let mut child = env.kiln().args(["pull", "--platform", "linux/arm64", &reference]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // The stalled layer is partly in the store's staging area (the server
    // sent half of it; buffers hold some back).
    let staged = || walk_files(&store_tmp(&env)).iter().any(|(_, size)| *size >= layer_size / 4);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !staged() {
        assert!(Instant::now() < deadline, "the pull never staged half of the layer: {:?}", walk_files(&store_tmp(&env)));
        assert!(child.try_wait().unwrap().is_none(), "the pull ended on a stalled server");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_9(&mut child);
    assert!(!entries(&store_tmp(&env)).is_empty());

    registry.stall.store(false, Ordering::SeqCst);
    env.ok(&["pull", "--platform", "linux/arm64", &reference]);
    assert!(env.tags().contains("test/noise"), "{}", env.tags());
    assert_eq!(entries(&store_tmp(&env)), Vec::<String>::new(), "the killed pull's partial blob is swept");
    let blob = env.path("data/images/blobs/sha256").join(&layer[7..]);
    use sha2::Digest;
    assert_eq!(format!("sha256:{:x}", sha2::Sha256::digest(std::fs::read(blob).unwrap())), layer, "the layer is whole");
    env.assert_tmp_empty();
}

/// Files below `dir`, with their sizes.
fn walk_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.metadata() {
            Ok(m) if m.is_dir() => out.extend(walk_files(&path)),
            Ok(m) => out.push((path, m.len())),
            Err(_) => {}
        }
    }
    out
}

#[test]
fn kill_9_during_an_export_keeps_the_file_it_was_replacing() {
    let env = Env::new();
    let rootfs = env.path("noise.tar");
    noise_rootfs(&rootfs, 150 << 20);
    env.ok(&["import", "--platform", "linux/arm64", rootfs.to_str().unwrap(), "noise:1"]);
    std::fs::remove_file(&rootfs).unwrap();
    let dest_dir = env.path("out");
    std::fs::create_dir(&dest_dir).unwrap();
    let dest = dest_dir.join("image.tar");
    std::fs::write(&dest, "the user's earlier export").unwrap();

    let mut child = env.kiln().args(["save", "-o", dest.to_str().unwrap(), "noise:1"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_for_entry(&dest_dir, Duration::from_secs(60), |n| n.starts_with(".kiln-export-")), "no export started");
    kill_9(&mut child);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "the user's earlier export", "a killed export replaces nothing");

    // The next export replaces the file and removes the dead one's temp file.
    env.ok(&["save", "-o", dest.to_str().unwrap(), "noise:1"]);
    assert_eq!(entries(&dest_dir), ["image.tar"]);
    let mut archive = tar::Archive::new(std::fs::File::open(&dest).unwrap());
    let names: Vec<String> = archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert!(names.iter().any(|n| n == "index.json"), "{names:?}");
    env.assert_tmp_empty();
}

#[test]
fn a_guest_kernel_panic_fails_the_step_at_its_line_within_seconds() {
    let env = Env::new();
    env.import_busybox("arm64", BUSYBOX);
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo c > /proc/sysrq-trigger\n"));
    let (mut child, lines) = spawn_build(&env, &env.ctx(), &["-t", "test/panic:1"]);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "kiln still waits on a dead guest");
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = lines.iter().collect::<Vec<_>>().join("\n");
    assert!(!status.success(), "{err}");
    assert!(err.contains("Dockerfile:2"), "names the step's line: {err}");
    assert!(err.contains("the guest kernel panicked (sysrq triggered crash)"), "names the cause: {err}");
    assert!(!env.tags().contains("test/panic"));
    env.assert_tmp_empty();
}

/// A tmpfs of `size` mounted at `path` for the guard's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "kiln-test"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "the full-disk tests mount a tmpfs and need root: {}", stderr(&out));
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_the_store_fails_the_layer_write_cleanly() {
    let env = Env::with_private_cache();
    let _disk = Tmpfs::mount(env.path("data"), "48m");
    env.import_busybox("arm64", BUSYBOX);
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN head -c 64000000 /dev/urandom > /big\n"));
    let out = build(&env, &env.ctx(), &["-t", "test/full:1"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("No space left on device"), "names the cause: {err}");
    assert!(err.contains("Dockerfile:2"), "names the step's line: {err}");
    assert!(!env.tags().contains("test/full"));
    assert_eq!(entries(&store_tmp(&env)), Vec::<String>::new(), "no partial layer");
    env.assert_tmp_empty();
    // The store still works: a small build on it succeeds.
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo small > /small\n"));
    let out = build(&env, &env.ctx(), &["-t", "test/full:2"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_full_disk_under_an_export_fails_cleanly_and_keeps_the_old_file() {
    let env = Env::new();
    let rootfs = env.path("noise.tar");
    noise_rootfs(&rootfs, 4 << 20);
    env.ok(&["import", "--platform", "linux/arm64", rootfs.to_str().unwrap(), "noise:1"]);
    let dest_dir = env.path("out");
    let _disk = Tmpfs::mount(dest_dir.clone(), "2m");
    let dest = dest_dir.join("image.tar");
    std::fs::write(&dest, "the user's earlier export").unwrap();
    let out = env.kiln().args(["save", "-o", dest.to_str().unwrap(), "noise:1"]).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("No space left on device") && err.contains(&*dest_dir.to_string_lossy()), "names the cause and place: {err}");
    assert_eq!(entries(&dest_dir), ["image.tar"], "no temp file is left");
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "the user's earlier export");
    env.assert_tmp_empty();
}

#[test]
fn two_builds_share_one_store_cache_and_cache_mount_at_once() {
    let env = Env::with_private_cache();
    env.import_busybox("arm64", BUSYBOX);
    let contexts: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|who| {
            let ctx = env.path(&format!("ctx-{who}"));
            std::fs::create_dir(&ctx).unwrap();
            let dockerfile = format!(
                "FROM {BUSYBOX}\nRUN --mount=type=cache,id=shared,target=/c echo {who} >> /c/log && sleep 1 && cp /c/log /seen\nRUN cat /seen\n"
            );
            std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
            ctx
        })
        .collect();
    let builds: Vec<_> = contexts
        .iter()
        .zip(["a", "b"])
        .map(|(ctx, who)| spawn_build(&env, ctx, &["-t", &format!("test/{who}:1")]))
        .collect();
    for (mut child, lines) in builds {
        let status = child.wait().unwrap();
        let log: Vec<String> = lines.try_iter().collect();
        assert!(status.success(), "{log:#?}");
    }
    for who in ["a", "b"] {
        let out = env.ok(&["run", "--platform", "linux/arm64", &format!("test/{who}:1"), "cat", "/seen"]);
        let seen = String::from_utf8_lossy(&out.stdout);
        assert!(seen.lines().any(|l| l == who), "build {who} saw its own line in the cache mount: {seen:?}");
    }
    // The cache volume is whole: a third build reads it.
    std::fs::write(
        contexts[0].join("Dockerfile"),
        format!("FROM {BUSYBOX}\nRUN --mount=type=cache,id=shared,target=/c cat /c/log > /after\n"),
    )
    .unwrap();
    let out = build(&env, &contexts[0], &["-t", "test/after:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.ok(&["run", "--platform", "linux/arm64", "test/after:1", "cat", "/after"]);
    let after = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(after == "a\n" || after == "b\n" || after == "a\nb\n" || after == "b\na\n", "{after:?}");
    assert_eq!(entries(&store_tmp(&env)), Vec::<String>::new());
    env.assert_tmp_empty();
}
