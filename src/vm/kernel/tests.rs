//! Fetch, verify, unpack and cache, against a local HTTP server serving
//! fabricated kernel packages.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::modinfo::tests::fake_module;
use super::*;

const RELEASE: &str = "6.1.0-99-cloud-arm64";

/// Appends a regular file to a test tar.
fn tar_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, path, data).unwrap();
}

/// An ar archive shaped like a .deb, `ext` naming the tar compression (`xz`, `zst`).
fn deb_archive(ext: &str, data: &[u8]) -> Vec<u8> {
    let (control, data_name) = (format!("control.tar.{ext}"), format!("data.tar.{ext}"));
    let mut ar = ar::Builder::new(Vec::new());
    for (name, body) in [("debian-binary", &b"2.0\n"[..]), (control.as_str(), b""), (data_name.as_str(), data)] {
        ar.append(&ar::Header::new(name.as_bytes().to_vec(), body.len() as u64), body).unwrap();
    }
    ar.into_inner().unwrap()
}

/// A kernel .deb like Debian's: ar(debian-binary, control.tar.xz, data.tar.xz).
fn fake_deb(modules: &[(&str, &[&str])], builtin: &[&str]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    tar_file(&mut tar, &format!("./boot/vmlinuz-{RELEASE}"), b"KERNEL IMAGE BYTES");
    tar_file(&mut tar, &format!("./boot/config-{RELEASE}"), b"CONFIG_X=y\n");
    for (name, deps) in modules {
        let depends = format!("depends={}", deps.join(","));
        let modname = format!("name={name}");
        let module = fake_module(true, &["license=GPL", &depends, &modname]);
        tar_file(&mut tar, &format!("./lib/modules/{RELEASE}/kernel/drivers/x/{name}.ko"), &module);
    }
    let builtin: String = builtin.iter().map(|b| format!("kernel/drivers/y/{b}.ko\n")).collect();
    tar_file(&mut tar, &format!("./lib/modules/{RELEASE}/modules.builtin"), builtin.as_bytes());
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&tar.into_inner().unwrap()).unwrap();
    deb_archive("xz", &xz.finish().unwrap())
}

fn standard_deb() -> Vec<u8> {
    fake_deb(
        &[
            ("virtio_pci_modern_dev", &[]),
            ("virtio_pci", &["virtio_pci_modern_dev", "virtio_ring"]),
            ("vsock", &[]),
            ("vmw_vsock_virtio_transport_common", &["vsock"]),
            ("vmw_vsock_virtio_transport", &["vmw_vsock_virtio_transport_common", "vsock"]),
            ("overlay", &[]),
            ("unrelated", &[]),
        ],
        &["virtio_ring", "virtio"],
    )
}

/// A one-thread HTTP/1.1 server: `files` by path, 404 otherwise. Counts requests.
fn serve(files: HashMap<String, Vec<u8>>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request);
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = match files.get(&path) {
                Some(b) => ("200 OK", b.clone()),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (format!("http://{addr}/debian"), hits)
}

const POOL_PATH: &str = "pool/main/l/linux-signed-arm64/linux-image-99_6.1.999-1_arm64.deb";

fn manifest_text(sha256: &str, size: usize) -> String {
    format!(
        r#"debian_arch = "arm64"
suite = "bookworm"
component = "main"
meta_package = "linux-image-cloud-arm64"
modules = ["virtio_pci", "vmw_vsock_virtio_transport", "overlay"]
[package]
name = "linux-image-{RELEASE}"
version = "6.1.999-1"
path = "{POOL_PATH}"
size = {size}
sha256 = "{sha256}"
"#
    )
}

struct Setup {
    _dirs: tempfile::TempDir,
    opts: KernelOptions,
    hits: Arc<AtomicUsize>,
}

/// A private cache and manifest dir, and a mirror serving `served` at the
/// pinned path; the manifest pins `pinned` (defaults to the served bytes).
fn setup(served: Option<Vec<u8>>, pinned: &[u8]) -> Setup {
    let dirs = tempfile::tempdir().unwrap();
    let manifests = dirs.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let sha = hex::encode(Sha256::digest(pinned));
    std::fs::write(manifests.join("arm64.toml"), manifest_text(&sha, pinned.len())).unwrap();
    let mut files = HashMap::new();
    if let Some(bytes) = served {
        files.insert(format!("/debian/{POOL_PATH}"), bytes);
    }
    let (mirror, hits) = serve(files);
    let opts = KernelOptions {
        kernel_image: None,
        kernel_modules: None,
        manifest_dir: Some(manifests),
        mirror: Some(mirror),
        apt_root: dirs.path().join("no-apt"),
        cache_dir: dirs.path().join("cache"),
    };
    Setup { _dirs: dirs, opts, hits }
}

fn arm64() -> Platform {
    "linux/arm64".parse().unwrap()
}

/// Everything under the arch dir of the cache (entries and leftovers).
fn cache_contents(opts: &KernelOptions) -> Vec<String> {
    match std::fs::read_dir(opts.cache_dir.join("kernels/arm64")) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn fetches_verifies_unpacks_and_caches() {
    let deb = standard_deb();
    let s = setup(Some(deb.clone()), &deb);
    let k = ensure_kernel(&arm64(), &s.opts).unwrap();
    assert_eq!(k.release, RELEASE);
    assert_eq!(std::fs::read(&k.image).unwrap(), b"KERNEL IMAGE BYTES");
    let names: Vec<String> = k.modules.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    // virtio_ring is built in; dependencies come before their users.
    assert_eq!(
        names,
        [
            "virtio_pci_modern_dev.ko",
            "virtio_pci.ko",
            "vsock.ko",
            "vmw_vsock_virtio_transport_common.ko",
            "vmw_vsock_virtio_transport.ko",
            "overlay.ko"
        ]
    );
    for m in &k.modules {
        assert!(std::fs::read(m).unwrap().starts_with(b"\x7fELF"));
        assert!(m.starts_with(s.opts.cache_dir.join("kernels/arm64/6.1.999-1/modules")));
    }
    assert_eq!(cache_contents(&s.opts), ["6.1.999-1"], "no temp dirs left");
    let hits = s.hits.load(Ordering::SeqCst);
    // Cached: the second call does not touch the network.
    assert_eq!(ensure_kernel(&arm64(), &s.opts).unwrap(), k);
    assert_eq!(s.hits.load(Ordering::SeqCst), hits);
    let listed = list_cached(&s.opts.cache_dir).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].arch, "arm64");
    assert_eq!(listed[0].record.release, RELEASE);
    assert!(listed[0].size > 0);
}

#[test]
fn checksum_mismatch_is_an_error_and_nothing_is_cached() {
    let good = standard_deb();
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    let s = setup(Some(tampered.clone()), &good);
    let err = ensure_kernel(&arm64(), &s.opts).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, KernelError::ChecksumMismatch { .. }), "{text}");
    assert!(text.contains(&hex::encode(Sha256::digest(&good))), "names the expected sum: {text}");
    assert!(text.contains(&hex::encode(Sha256::digest(&tampered))), "names the actual sum: {text}");
    assert!(cache_contents(&s.opts).is_empty(), "{:?}", cache_contents(&s.opts));
    assert!(list_cached(&s.opts.cache_dir).unwrap().is_empty());
}

#[test]
fn a_larger_file_than_pinned_is_cut_off() {
    let good = standard_deb();
    let mut longer = good.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    let s = setup(Some(longer), &good);
    let err = ensure_kernel(&arm64(), &s.opts).unwrap_err();
    assert!(matches!(err, KernelError::SizeMismatch { .. }), "{err}");
    assert!(cache_contents(&s.opts).is_empty());
}

#[test]
fn missing_package_says_the_pin_is_stale() {
    let deb = standard_deb();
    let s = setup(None, &deb);
    let err = ensure_kernel(&arm64(), &s.opts).unwrap_err().to_string();
    assert!(err.contains("stale") && err.contains("scripts/refresh-kernels.sh") && err.contains(RELEASE), "{err}");
    assert!(cache_contents(&s.opts).is_empty());
}

#[test]
fn a_module_missing_from_the_package_is_named() {
    let deb = fake_deb(&[("virtio_pci", &["virtio_pci_modern_dev"]), ("vmw_vsock_virtio_transport", &[]), ("overlay", &[])], &[]);
    let s = setup(Some(deb.clone()), &deb);
    let err = ensure_kernel(&arm64(), &s.opts).unwrap_err().to_string();
    assert!(err.contains("virtio_pci_modern_dev") && err.contains("needed by virtio_pci"), "{err}");
    assert!(cache_contents(&s.opts).is_empty());
}

#[test]
fn no_mirror_anywhere_tells_the_user_what_to_set() {
    let deb = standard_deb();
    let mut s = setup(Some(deb.clone()), &deb);
    s.opts.mirror = None;
    let err = ensure_kernel(&arm64(), &s.opts).unwrap_err().to_string();
    assert!(err.contains("KILN_DEBIAN_MIRROR"), "{err}");
}

#[test]
fn local_kernel_with_a_modules_dir() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("Image");
    std::fs::write(&image, b"\0\0junk Linux version 6.9.1-test (gcc) #1 SMP\0").unwrap();
    let mods = dir.path().join("mods/kernel");
    std::fs::create_dir_all(&mods).unwrap();
    std::fs::write(mods.join("vsock.ko"), fake_module(true, &["depends=", "name=vsock"])).unwrap();
    std::fs::write(mods.join("vmw_vsock_virtio_transport.ko"), fake_module(true, &["depends=vsock", "name=vmw_vsock_virtio_transport"]))
        .unwrap();
    let opts = KernelOptions {
        kernel_image: Some(image.clone()),
        kernel_modules: Some(dir.path().join("mods")),
        manifest_dir: None,
        mirror: None,
        apt_root: dir.path().to_path_buf(),
        cache_dir: dir.path().join("cache"),
    };
    let k = ensure_kernel(&arm64(), &opts).unwrap();
    assert_eq!(k.image, image);
    assert_eq!(k.release, "6.9.1-test");
    // The other manifest modules are absent: a local kernel has them built in.
    assert_eq!(k.modules, [mods.join("vsock.ko"), mods.join("vmw_vsock_virtio_transport.ko")]);
    let bare = ensure_kernel(&arm64(), &KernelOptions { kernel_modules: None, ..opts.clone() }).unwrap();
    assert!(bare.modules.is_empty());
    // Modules without a local kernel would be silently ignored: an error instead.
    let err = ensure_kernel(&arm64(), &KernelOptions { kernel_image: None, ..opts }).unwrap_err().to_string();
    assert!(err.contains("KILN_KERNEL_MODULES") && err.contains("KILN_KERNEL"), "{err}");
}

#[test]
fn release_from_a_bzimage_header() {
    let mut img = vec![0u8; 0x1000];
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x20E..0x210].copy_from_slice(&0x300u16.to_le_bytes());
    img[0x500..0x520].copy_from_slice(b"6.1.0-50-cloud-amd64 (debian-ker");
    assert_eq!(detect_release(&img).unwrap(), "6.1.0-50-cloud-amd64");
    assert_eq!(detect_release(b"nothing here"), None);
}

// Setting a directory's mtime through File::open needs Unix (Windows opens no directories that way).
#[cfg(unix)]
#[test]
fn stale_temp_dirs_of_killed_runs_are_swept_young_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join(".tmp-old");
    let young = dir.path().join(".tmp-young");
    let entry = dir.path().join("6.1.1-1");
    for d in [&old, &young, &entry] {
        std::fs::create_dir(d).unwrap();
    }
    let long_ago = std::time::SystemTime::now() - STALE_TEMP_AGE - std::time::Duration::from_secs(60);
    std::fs::File::open(&old).unwrap().set_modified(long_ago).unwrap();
    std::fs::File::open(&entry).unwrap().set_modified(long_ago).unwrap();
    remove_stale_temps(dir.path());
    assert!(!old.exists());
    assert!(young.exists() && entry.exists());
}

#[test]
fn zstd_data_and_compressed_modules_under_usr_lib() {
    // Newer Debian kernels: data.tar.zst, merged /usr, modules as .ko.xz/.ko.zst.
    let mut tar = tar::Builder::new(Vec::new());
    tar_file(&mut tar, "./boot/vmlinuz-6.12.0-1-cloud-arm64", b"IMG");
    let vsock = fake_module(true, &["depends=", "name=vsock"]);
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&vsock).unwrap();
    tar_file(&mut tar, "./usr/lib/modules/6.12.0-1-cloud-arm64/kernel/net/vmw_vsock/vsock.ko.xz", &xz.finish().unwrap());
    let transport = fake_module(true, &["depends=vsock", "name=vmw_vsock_virtio_transport"]);
    let zst = zstd::stream::encode_all(&transport[..], 1).unwrap();
    tar_file(&mut tar, "./usr/lib/modules/6.12.0-1-cloud-arm64/kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.zst", &zst);
    let data = zstd::stream::encode_all(&tar.into_inner().unwrap()[..], 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deb_path = dir.path().join("k.deb");
    std::fs::write(&deb_path, deb_archive("zst", &data)).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let got = deb::extract(&deb_path, &["vmw_vsock_virtio_transport".to_string()], &out).unwrap();
    assert_eq!(got.release, "6.12.0-1-cloud-arm64");
    assert_eq!(got.modules, ["vsock", "vmw_vsock_virtio_transport"]);
    // Stored decompressed, so the guest needs no in-kernel module decompressor.
    assert_eq!(std::fs::read(out.join("modules/vsock.ko")).unwrap(), vsock);
    assert_eq!(std::fs::read(out.join("modules/vmw_vsock_virtio_transport.ko")).unwrap(), transport);
}

#[test]
fn a_deb_without_a_kernel_image_is_rejected() {
    let mut ar = ar::Builder::new(Vec::new());
    ar.append(&ar::Header::new(b"debian-binary".to_vec(), 4), &b"2.0\n"[..]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deb_path = dir.path().join("k.deb");
    std::fs::write(&deb_path, ar.into_inner().unwrap()).unwrap();
    let err = deb::extract(&deb_path, &[], dir.path()).unwrap_err().to_string();
    assert!(err.contains("no data.tar"), "{err}");
    std::fs::write(&deb_path, b"not an ar archive").unwrap();
    assert!(deb::extract(&deb_path, &[], dir.path()).is_err());
}
