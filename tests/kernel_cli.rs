//! `kiln kernel fetch` / `kiln kernel list` as a user runs them, against a
//! local HTTP mirror serving a fabricated kernel package.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const POOL_PATH: &str = "pool/main/l/linux-signed-arm64/linux-image-6.1.0-77-cloud-arm64_6.1.777-1_arm64.deb";

/// A kernel .deb with only an image (the manifest below asks for no modules).
fn fake_deb() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let image = b"arm64 Image bytes";
    let mut h = tar::Header::new_gnu();
    h.set_size(image.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "./boot/vmlinuz-6.1.0-77-cloud-arm64", &image[..]).unwrap();
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&tar.into_inner().unwrap()).unwrap();
    let data = xz.finish().unwrap();
    let mut ar = ar::Builder::new(Vec::new());
    for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("control.tar.xz", b""), ("data.tar.xz", &data)] {
        ar.append(&ar::Header::new(name.as_bytes().to_vec(), body.len() as u64), body).unwrap();
    }
    ar.into_inner().unwrap()
}

/// Serves `files` by path (404 otherwise) until the test process ends.
fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let path = String::from_utf8_lossy(&request).split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = match files.get(&path) {
                Some(b) => ("200 OK", b.clone()),
                None => ("404 Not Found", Vec::new()),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}/debian/")
}

fn write_manifest(dir: &Path, deb: &[u8]) {
    let text = format!(
        "debian_arch = \"arm64\"\nsuite = \"bookworm\"\ncomponent = \"main\"\nmeta_package = \"linux-image-cloud-arm64\"\nmodules = []\n\
         [package]\nname = \"linux-image-6.1.0-77-cloud-arm64\"\nversion = \"6.1.777-1\"\npath = \"{POOL_PATH}\"\nsize = {}\nsha256 = \"{}\"\n",
        deb.len(),
        hex::encode(Sha256::digest(deb))
    );
    std::fs::write(dir.join("arm64.toml"), text).unwrap();
}

fn kiln(root: &Path, mirror: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_CACHE_DIR", root.join("cache"))
        .env("KILN_KERNEL_MANIFESTS", root.join("manifests"))
        .env("KILN_DEBIAN_MIRROR", mirror)
        .env_remove("KILN_KERNEL")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn setup() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("manifests")).unwrap();
    write_manifest(&root.path().join("manifests"), &fake_deb());
    root
}

#[test]
fn fetch_then_list() {
    let root = setup();
    let mirror = serve(HashMap::from([(format!("/debian/{POOL_PATH}"), fake_deb())]));

    let empty = kiln(root.path(), &mirror, &["kernel", "list"]);
    assert!(empty.status.success());
    assert!(text(&empty.stdout).contains("no kernels cached"), "{}", text(&empty.stdout));

    let out = kiln(root.path(), &mirror, &["kernel", "fetch", "--platform", "linux/arm64"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("linux/arm64: kernel 6.1.0-77-cloud-arm64"), "{stdout}");
    let image = root.path().join("cache/kernels/arm64/6.1.777-1/vmlinuz");
    assert!(stdout.contains(&image.display().to_string()), "{stdout}");
    assert_eq!(std::fs::read(&image).unwrap(), b"arm64 Image bytes");

    let list = text(&kiln(root.path(), &mirror, &["kernel", "list"]).stdout);
    assert!(
        list.contains("arm64") && list.contains("linux-image-6.1.0-77-cloud-arm64") && list.contains("6.1.0-77-cloud-arm64"),
        "{list}"
    );
}

#[test]
fn stale_pin_fails_with_advice_and_caches_nothing() {
    let root = setup();
    let mirror = serve(HashMap::new());
    let out = kiln(root.path(), &mirror, &["kernel", "fetch", "--platform", "linux/arm64"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("stale") && stderr.contains("scripts/refresh-kernels.sh"), "{stderr}");
    assert!(!root.path().join("cache/kernels/arm64/6.1.777-1").exists());
}

#[test]
fn bad_platform_is_a_clear_error() {
    let root = setup();
    let out = kiln(root.path(), "http://127.0.0.1:9/debian", &["kernel", "fetch", "--platform", "linux/mips64le"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("mips64le") && stderr.contains("arm64") && stderr.contains("riscv64"), "{stderr}");
}
