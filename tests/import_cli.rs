#![cfg(unix)]
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

/// A layer blob damaged in place (same size) is caught before anything is
/// tagged over it: a build with only metadata steps reads no layer, so the
/// tag's check is what stops it, and `kiln tag` is refused the same way.
#[test]
fn a_damaged_layer_blob_is_never_tagged_again() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(import(&data, &["-", "base:1"], Some(&rootfs_tar())));
    let blobs = data.join("images/blobs/sha256");
    let layer = std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().path()).max_by_key(|p| p.metadata().unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&layer, bytes).unwrap();

    let ctx = tmp.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM base:1\nLABEL a=b\n").unwrap();
    let out = kiln(&data).args(["build", "--platform", "linux/amd64", "-t", "derived:1"]).arg(&ctx).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let name = layer.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!out.status.success() && err.contains(&name) && err.contains("damaged"), "{err}");
    let out = kiln(&data).args(["tag", "base:1", "copy:1"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("damaged"));
    let images = ok(kiln(&data).arg("images").output().unwrap());
    assert!(!images.contains("derived") && !images.contains("copy"), "{images}");
}

/// Runs `kiln ARGS` under `data` with `input` on its standard input.
fn with_stdin(data: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = kiln(data).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || drop(stdin.write_all(&input)));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn save_to_stdout_and_load_from_stdin_round_trip_like_docker() {
    let src = tempfile::tempdir().unwrap();
    ok(import(src.path(), &["--platform", "linux/arm64", "-", "example.org/team/app:2"], Some(&rootfs_tar())));
    let digest = |data: &Path| {
        let listing = ok(kiln(data).arg("images").output().unwrap());
        listing.lines().find(|l| l.starts_with("example.org/team/app:2")).map(|l| l.split_whitespace().nth(1).unwrap().to_string())
    };
    let want = digest(src.path()).unwrap();
    for format in ["oci", "docker"] {
        let saved = kiln(src.path()).args(["save", "--format", format, "example.org/team/app:2"]).stdout(Stdio::piped()).output().unwrap();
        assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
        // From standard input, and from a file given with -i.
        let dst = tempfile::tempdir().unwrap();
        let loaded = ok(with_stdin(dst.path(), &["load"], &saved.stdout));
        assert!(loaded.starts_with(&format!("Loaded example.org/team/app:2 (sha256:{want}")), "{format}: {loaded}");
        assert_eq!(digest(dst.path()).as_deref(), Some(want.as_str()), "{format}: the same image under its own name");
        let file = dst.path().join("saved.tar");
        std::fs::write(&file, &saved.stdout).unwrap();
        let again = tempfile::tempdir().unwrap();
        ok(kiln(again.path()).args(["load", "-i"]).arg(&file).output().unwrap());
        assert_eq!(digest(again.path()).as_deref(), Some(want.as_str()), "{format}: from a file");
    }
}

/// A classic `docker save` archive: `<id>.json` configs, `<id>/layer.tar`
/// layers and manifest.json, plus `extra` members.
fn classic_docker_archive(layer: &[u8], diff_id: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    use sha2::Digest;
    let config = serde_json::json!({
        "architecture": "arm64", "os": "linux",
        "config": {"Cmd": ["/bin/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_id = format!("{:x}", sha2::Sha256::digest(&config));
    let layer_id = "b".repeat(64);
    let manifest = serde_json::json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": ["legacy/app:3"],
        "Layers": [format!("{layer_id}/layer.tar")],
    }]);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&format!("{config_id}.json"), &config);
    add(&format!("{layer_id}/layer.tar"), layer);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    for (name, data) in extra {
        // Names the tar crate would refuse are written by hand.
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn classic_docker_archives_load_and_bad_ones_tag_nothing() {
    use sha2::Digest;
    let layer = rootfs_tar();
    let diff_id = format!("sha256:{:x}", sha2::Sha256::digest(&layer));
    let data = tempfile::tempdir().unwrap();
    let outside = data.path().join("escaped");
    let archive = classic_docker_archive(&layer, &diff_id, &[("../escaped", b"x"), ("/tmp/kiln-load-escaped", b"x")]);
    let loaded = ok(with_stdin(data.path(), &["load"], &archive));
    assert!(loaded.contains("Loaded docker.io/legacy/app:3"), "{loaded}");
    assert!(!outside.exists() && !Path::new("/tmp/kiln-load-escaped").exists(), "members outside the formats are skipped");
    let config: serde_json::Value = serde_json::from_str(&ok(kiln(data.path()).args(["inspect", "legacy/app:3"]).output().unwrap())).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], diff_id.as_str());
    assert_eq!(config["config"]["Cmd"][0], "/bin/hello");

    // A layer that is not the one its config names: an error, nothing tagged.
    let other = tempfile::tempdir().unwrap();
    let wrong = classic_docker_archive(&layer, &format!("sha256:{}", "0".repeat(64)), &[]);
    let out = with_stdin(other.path(), &["load"], &wrong);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard input") && err.contains("but the config says"), "{err}");
    assert!(!ok(kiln(other.path()).arg("images").output().unwrap()).contains("legacy"), "nothing is tagged");
    // Not an archive at all.
    let out = with_stdin(other.path(), &["load"], b"hello");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("standard input"));
}
