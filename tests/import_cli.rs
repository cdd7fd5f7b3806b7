//! `kiln import`: a root file system tar becomes an image that other OCI
//! tools read (umoci unpacks it and checks diff_ids, skopeo reads the
//! platform), and bad input leaves the store untouched.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::*;

/// A small root file system: a directory, an executable, a text file, a symlink.
fn rootfs_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], kind: tar::EntryType, mode: u32, link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    add("./", b"", tar::EntryType::Directory, 0o755, None);
    add("./etc/", b"", tar::EntryType::Directory, 0o755, None);
    add("./etc/os-release", b"ID=kiln-test\n", tar::EntryType::Regular, 0o644, None);
    add("./bin/", b"", tar::EntryType::Directory, 0o755, None);
    add("./bin/hello", b"#!/bin/sh\necho hello\n", tar::EntryType::Regular, 0o755, None);
    add("./bin/hi", b"", tar::EntryType::Symlink, 0o777, Some("hello"));
    add("./data.bin", &noise(300_000, 7), tar::EntryType::Regular, 0o600, None);
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "kiln failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn import(data: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = kiln(data);
    cmd.arg("import").args(args).env("SOURCE_DATE_EPOCH", "1700000000");
    let Some(input) = stdin else { return cmd.output().unwrap() };
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// (blob count, index.json) of the store under `data`.
fn store_snapshot(data: &Path) -> (usize, Option<String>) {
    let store = data.join("images");
    let blobs = std::fs::read_dir(store.join("blobs/sha256")).map(|d| d.count()).unwrap_or(0);
    (blobs, std::fs::read_to_string(store.join("index.json")).ok())
}

#[test]
fn imported_tar_is_an_image_umoci_unpacks_and_skopeo_reads() {
    let umoci = require("umoci", "umoci");
    let skopeo = require("skopeo", "skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("rootfs.tar.gz");
    std::fs::write(&file, gzip(&rootfs_tar())).unwrap();

    let args = [
        "--platform", "linux/arm64",
        "-c", r#"CMD ["/bin/hello"]"#,
        "--change", "ENV PATH=/usr/bin:/bin GREETING=hi",
        "-c", "WORKDIR /srv",
        "-c", "EXPOSE 8080",
        "-m", "made by a test",
    ];
    let mut all: Vec<&str> = args.to_vec();
    let file_s = file.to_str().unwrap();
    all.extend([file_s, "example.com/kiln/imported:v1"]);
    let digest = ok(import(&data, &all, None)).trim().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "prints the digest: {digest:?}");

    let layout = tmp.path().join("layout");
    ok(kiln(&data).args(["save", "--format", "oci-dir", "-o"]).arg(&layout).arg("example.com/kiln/imported:v1").output().unwrap());
    let bundle = tmp.path().join("bundle");
    run(Command::new(&umoci).args(["unpack", "--rootless", "--image"]).arg(format!("{}:v1", layout.display())).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap(), "ID=kiln-test\n");
    assert_eq!(std::fs::read(rootfs.join("data.bin")).unwrap(), noise(300_000, 7));
    assert_eq!(std::fs::read_link(rootfs.join("bin/hi")).unwrap(), Path::new("hello"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(rootfs.join("bin/hello")).unwrap().permissions().mode() & 0o777, 0o755);

    let inspect: serde_json::Value = serde_json::from_str(&run(
        Command::new(&skopeo).args(["inspect", "--override-arch", "arm64"]).arg(format!("oci:{}:v1", layout.display())),
    ))
    .unwrap();
    assert_eq!(inspect["Architecture"], "arm64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Created"], "2023-11-14T22:13:20Z", "SOURCE_DATE_EPOCH sets the creation time");

    let config: serde_json::Value =
        serde_json::from_str(&ok(kiln(&data).args(["inspect", "example.com/kiln/imported:v1"]).output().unwrap())).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/hello"]));
    assert_eq!(config["config"]["Env"], serde_json::json!(["PATH=/usr/bin:/bin", "GREETING=hi"]));
    assert_eq!(config["config"]["WorkingDir"], "/srv");
    assert_eq!(config["config"]["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(config["history"][0]["created_by"], "import");
    assert_eq!(config["history"][0]["comment"], "made by a test");
}

#[test]
fn stdin_import_is_reproducible_and_keeps_the_platform_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tar = rootfs_tar();
    let a = ok(import(&data, &["--platform", "linux/arm/v7", "-", "armv7/rootfs"], Some(&tar)));
    // Same bytes gzip-compressed, from a file: same image.
    let file = tmp.path().join("rootfs.tgz");
    std::fs::write(&file, gzip(&tar)).unwrap();
    let b = ok(import(&data, &["--platform", "linux/arm/v7", file.to_str().unwrap()], None));
    assert_eq!(a, b, "the same tar, platform and SOURCE_DATE_EPOCH give the same image digest");
    let config: serde_json::Value =
        serde_json::from_str(&ok(kiln(&data).args(["inspect", "armv7/rootfs"]).output().unwrap())).unwrap();
    assert_eq!((config["architecture"].as_str(), config["variant"].as_str()), (Some("arm"), Some("v7")));
    let images = ok(kiln(&data).arg("images").output().unwrap());
    assert!(images.contains("docker.io/armv7/rootfs:latest") && images.contains("linux/arm/v7"), "{images}");
}

#[test]
fn bad_input_names_the_file_and_tags_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let good = tmp.path().join("good.tar");
    std::fs::write(&good, rootfs_tar()).unwrap();
    ok(import(&data, &[good.to_str().unwrap(), "kept:1"], None));
    let before = store_snapshot(&data);

    let gz = gzip(&rootfs_tar());
    let truncated = tmp.path().join("truncated.tar.gz");
    std::fs::write(&truncated, &gz[..gz.len() / 2]).unwrap();
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "not a tar archive\n".repeat(100)).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![truncated.to_str().unwrap(), "bad:1"], "truncated.tar.gz"),
        (vec![text.to_str().unwrap(), "bad:1"], "notes.txt: not a tar archive"),
        (vec!["/nonexistent/rootfs.tar", "bad:1"], "/nonexistent/rootfs.tar: cannot open"),
        (vec!["-c", "RUN apt-get update", good.to_str().unwrap(), "bad:1"], "RUN cannot be used in a change"),
        (vec![good.to_str().unwrap(), "Bad Name"], "invalid image name"),
    ];
    for (args, want) in cases {
        let out = import(&data, &args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains(want), "{args:?}: {stderr:?} should contain {want:?}");
        assert_eq!(store_snapshot(&data), before, "{args:?} changed the store");
    }
    let images = ok(kiln(&data).arg("images").output().unwrap());
    assert!(!images.contains("bad:1") && images.contains("kept:1"), "{images}");
}

#[test]
fn rmi_takes_the_digest_that_images_shows_like_docker_rmi() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let digest = ok(import(&data, &["-", "one/image:1"], Some(&rootfs_tar()))).trim().to_string();
    let id = &digest.trim_start_matches("sha256:")[..12];
    assert!(ok(kiln(&data).arg("images").output().unwrap()).contains(id), "images shows {id}");
    ok(kiln(&data).args(["tag", "one/image:1", "two/image:1"]).output().unwrap());

    let out = kiln(&data).args(["rmi", id]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("several names") && err.contains("docker.io/two/image:1"), "{err}");

    ok(kiln(&data).args(["rmi", "two/image:1"]).output().unwrap());
    let out = ok(kiln(&data).args(["rmi", id]).output().unwrap());
    assert!(out.contains("Untagged: docker.io/one/image:1"), "{out}");
    assert!(!ok(kiln(&data).arg("images").output().unwrap()).contains(id));
}
