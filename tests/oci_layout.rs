#![cfg(unix)]
//! OCI layouts and Docker archives written by kiln, checked by umoci,
//! oci-image-tool and skopeo; layouts read back; the image CLI commands.

mod support;

use std::process::Command;

use kiln::oci::layout::{self, ExportEntry, Format, LayoutError};
use kiln::oci::{Compression, Store};
use support::*;

static NEVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn entry(d: &kiln::oci::Descriptor, tag: &str) -> ExportEntry {
    ExportEntry { descriptor: d.clone(), ref_name: Some(tag.into()), repo_tag: Some(format!("example.com/kiln/test:{tag}")) }
}

#[test]
fn oci_layout_dir_passes_umoci_unpack_and_oci_image_tool() {
    let umoci = require("umoci", "umoci");
    let oit = require("oci-image-tool", "oci-image-tool");
    let src = temp_store();
    let image = build_image(&src.store, 51, &[150_000, 2_000], "linux/amd64", Compression::Gzip);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    layout::export(&src.store, &[entry(&image, "v1")], Format::OciDir, &dir, None, true, &NEVER).unwrap();

    run(Command::new(&oit).args(["validate", "--type", "image", "--ref", "name=v1"]).arg(&dir));
    let bundle = out.path().join("bundle");
    run(Command::new(&umoci).args(["unpack", "--rootless", "--image"]).arg(format!("{}:v1", dir.display())).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/layer-1.txt")).unwrap(), "seed 51 layer 1\n");
    assert_eq!(std::fs::read(rootfs.join("data/blob-0.bin")).unwrap(), noise(150_000, 51_000));

    // Exporting to an existing path is refused rather than merged.
    let err = layout::export(&src.store, &[entry(&image, "v1")], Format::OciDir, &dir, None, true, &NEVER).unwrap_err();
    assert!(matches!(err, LayoutError::Exists { .. }), "{err}");
}

#[test]
fn umoci_rejects_a_layer_whose_diff_id_is_wrong() {
    // Proves the umoci check above can fail: corrupt the config's diff_id.
    let umoci = require("umoci", "umoci");
    let src = temp_store();
    let image = build_image(&src.store, 52, &[1_000], "linux/amd64", Compression::Gzip);
    let img = src.store.image(&image, None).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&img.config_bytes).unwrap();
    config["rootfs"]["diff_ids"][0] = serde_json::json!(format!("sha256:{}", "0".repeat(64)));
    let config = src.store.put_json(&config, kiln::oci::MediaType::ImageConfig).unwrap();
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": img.manifest.layers()});
    let bad = src.store.put_json(&manifest, kiln::oci::MediaType::ImageManifest).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    layout::export(&src.store, &[entry(&bad, "bad")], Format::OciDir, &dir, None, true, &NEVER).unwrap();
    let status = Command::new(&umoci)
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:bad", dir.display()))
        .arg(out.path().join("bundle"))
        .output()
        .unwrap();
    assert!(!status.status.success(), "umoci must reject a wrong diff_id");
}

#[test]
fn oci_tar_of_an_index_and_docker_archive_are_read_by_skopeo_and_deterministic() {
    let skopeo = require("skopeo", "skopeo");
    let src = temp_store();
    let amd = build_image(&src.store, 53, &[30_000, 1_000], "linux/amd64", Compression::Gzip);
    let arm = build_image(&src.store, 54, &[30_000], "linux/arm64", Compression::Gzip);
    let index = build_index(&src.store, &[(amd.clone(), "linux/amd64"), (arm.clone(), "linux/arm64")]);
    let out = tempfile::tempdir().unwrap();

    let tar1 = out.path().join("multi.tar");
    let tar2 = out.path().join("multi-again.tar");
    layout::export(&src.store, &[entry(&index, "multi")], Format::OciTar, &tar1, None, false, &NEVER).unwrap();
    layout::export(&src.store, &[entry(&index, "multi")], Format::OciTar, &tar2, None, false, &NEVER).unwrap();
    assert_eq!(std::fs::read(&tar1).unwrap(), std::fs::read(&tar2).unwrap(), "export is deterministic");
    let raw = run(Command::new(&skopeo).args(["inspect", "--raw"]).arg(format!("oci-archive:{}:multi", tar1.display())));
    assert_eq!(raw.as_bytes(), src.store.read_blob(index.digest(), None).unwrap());
    let v: serde_json::Value = serde_json::from_str(&run(
        Command::new(&skopeo).args(["inspect", "--override-arch", "arm64"]).arg(format!("oci-archive:{}:multi", tar1.display())),
    ))
    .unwrap();
    // skopeo reports the index digest and the selected image's config.
    assert_eq!(v["Digest"], index.digest().to_string());
    assert_eq!(v["Architecture"], "arm64");
    assert_eq!(v["Layers"][0], src.store.image(&arm, None).unwrap().manifest.layers()[0].digest().to_string());

    // Docker archive of the arm64 image out of the index.
    let docker = out.path().join("docker.tar");
    let arm64: kiln::platform::Platform = "linux/arm64".parse().unwrap();
    layout::export(&src.store, &[entry(&index, "multi")], Format::DockerArchive, &docker, Some(&arm64), false, &NEVER).unwrap();
    let v: serde_json::Value = serde_json::from_str(&run(Command::new(&skopeo).arg("inspect").arg(format!("docker-archive:{}", docker.display())))).unwrap();
    assert_eq!(v["Architecture"], "arm64");
    assert_eq!(v["RepoTags"], serde_json::json!([]), "skopeo lists tags only for registries");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);
    // manifest.json as `docker load` reads it.
    let mut archive = tar::Archive::new(std::fs::File::open(&docker).unwrap());
    let mut names = Vec::new();
    let mut manifest_json = None;
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "manifest.json" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            manifest_json = Some(s);
        }
        names.push(name);
    }
    let m: serde_json::Value = serde_json::from_str(&manifest_json.expect("manifest.json present")).unwrap();
    assert_eq!(m[0]["RepoTags"], serde_json::json!(["example.com/kiln/test:multi"]));
    for path in std::iter::once(&m[0]["Config"]).chain(m[0]["Layers"].as_array().unwrap()) {
        assert!(names.contains(&path.as_str().unwrap().to_string()), "{path} missing from the archive");
    }
}

#[test]
fn import_from_oci_layouts_kilns_and_skopeos() {
    let skopeo = require("skopeo", "skopeo");
    let src = temp_store();
    let image = build_image(&src.store, 55, &[20_000], "linux/amd64", Compression::Zstd);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    layout::export(&src.store, &[entry(&image, "v1")], Format::OciDir, &dir, None, true, &NEVER).unwrap();

    let dst = temp_store();
    let tagged = layout::import_dir(&dst.store, &dir, Some("v1"), |r, _| format!("localhost/imported:{r}")).unwrap();
    assert_eq!(tagged.len(), 1);
    assert_eq!(dst.store.resolve("localhost/imported:v1").unwrap().digest(), image.digest());
    assert_same_content(&src.store, &dst.store, &image);

    // A layout written by skopeo.
    let theirs = out.path().join("skopeo-layout");
    run(Command::new(&skopeo).arg("copy").arg(format!("oci:{}:v1", dir.display())).arg(format!("oci:{}:copied", theirs.display())));
    let dst2 = temp_store();
    layout::import_dir(&dst2.store, &theirs, None, |r, _| format!("localhost/skopeo:{r}")).unwrap();
    let d = dst2.store.resolve("localhost/skopeo:copied").unwrap();
    assert_eq!(dst2.store.image(&d, None).unwrap().diff_ids(), src.store.image(&image, None).unwrap().diff_ids());

    // A layout with a missing blob: clear error, store unchanged.
    let layer = src.store.image(&image, None).unwrap().manifest.layers()[0].clone();
    std::fs::remove_file(dir.join("blobs/sha256").join(layer.digest().digest())).unwrap();
    let dst3 = temp_store();
    let before = store_state(&dst3.store);
    let err = layout::import_dir(&dst3.store, &dir, None, |r, _| r.to_string()).unwrap_err();
    assert!(matches!(err, LayoutError::MissingBlob { .. }) && err.to_string().contains(layer.digest().digest()), "{err}");
    assert_eq!(store_state(&dst3.store), before);
}

#[test]
fn image_commands_list_tag_inspect_save_load_remove_and_prune() {
    let data = tempfile::tempdir().unwrap();
    let image = {
        let store = Store::open(data.path().join("images")).unwrap();
        let image = build_image(&store, 56, &[10_000, 500], "linux/arm64", Compression::Gzip);
        store.tag("example.com/team/app:v1", &image).unwrap();
        image
    };
    let short = &image.digest().digest()[..12];

    run(kiln(data.path()).args(["tag", "example.com/team/app:v1", "myapp"]));
    let listing = run(kiln(data.path()).arg("images"));
    assert!(listing.contains("example.com/team/app:v1") && listing.contains("docker.io/library/myapp:latest"), "{listing}");
    assert!(listing.contains(short) && listing.contains("linux/arm64"), "{listing}");

    let inspect: serde_json::Value = serde_json::from_str(&run(kiln(data.path()).args(["inspect", "myapp"]))).unwrap();
    assert_eq!(inspect["architecture"], "arm64");
    assert_eq!(inspect["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(inspect["history"][1]["created_by"], "kiln test layer 1");
    let by_digest: serde_json::Value = serde_json::from_str(&run(kiln(data.path()).args(["inspect", short]))).unwrap();
    assert_eq!(by_digest, inspect);

    let out = data.path().join("saved");
    run(kiln(data.path()).args(["save", "myapp", "--format", "oci-dir", "-o"]).arg(&out));
    let other = tempfile::tempdir().unwrap();
    let loaded = run(kiln(other.path()).arg("load").arg(&out));
    assert!(loaded.contains("Loaded docker.io/library/myapp:latest"), "the saved name comes back: {loaded}");

    let missing = kiln(data.path()).args(["inspect", "nothere"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such image"), "{}", String::from_utf8_lossy(&missing.stderr));

    let rmi = run(kiln(data.path()).args(["rmi", "myapp"]));
    assert!(rmi.contains("Untagged: docker.io/library/myapp:latest") && rmi.contains("Deleted 0 blobs"), "{rmi}");
    let rmi = run(kiln(data.path()).args(["rmi", "example.com/team/app:v1"]));
    assert!(rmi.contains("Deleted 4 blobs"), "manifest, config and 2 layers go: {rmi}");
    let listing = run(kiln(data.path()).arg("images"));
    assert_eq!(listing.lines().count(), 1, "{listing}");
}

#[test]
fn an_archive_export_replaces_a_file_only_once_it_is_complete() {
    let src = temp_store();
    let image = build_image(&src.store, 55, &[20_000, 1_000], "linux/amd64", Compression::Gzip);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("image.tar");
    std::fs::write(&dest, "the user's file").unwrap();
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };

    let err = layout::export(&src.store, &[entry(&image, "v1")], Format::OciTar, &dest, None, false, &NEVER).unwrap_err();
    assert!(matches!(err, LayoutError::Exists { .. }), "{err}");

    // A layer that vanished from the store fails the export half-way.
    let layer = src.store.image(&image, None).unwrap().manifest.layers()[1].clone();
    let layer_path = src.store.blob_path(layer.digest()).unwrap();
    let layer_bytes = std::fs::read(&layer_path).unwrap();
    std::fs::remove_file(&layer_path).unwrap();
    layout::export(&src.store, &[entry(&image, "v1")], Format::OciTar, &dest, None, true, &NEVER).unwrap_err();
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "the user's file", "a failed export keeps the old file");
    assert_eq!(listing(), ["image.tar"], "no temporary file is left");

    // What an export killed by SIGKILL leaves (its process is gone) goes with the next export.
    std::fs::write(out.path().join(".kiln-export-4000000000-AbCd"), "partial").unwrap();
    std::fs::write(&layer_path, layer_bytes).unwrap();
    layout::export(&src.store, &[entry(&image, "v1")], Format::OciTar, &dest, None, true, &NEVER).unwrap();
    assert_eq!(listing(), ["image.tar"]);
    let mut archive = tar::Archive::new(std::fs::File::open(&dest).unwrap());
    assert!(archive.entries().unwrap().any(|e| e.unwrap().path().unwrap().to_str() == Some("index.json")));
    // Created like any file the user writes: 0666 less the umask, not 0600.
    use std::os::unix::fs::PermissionsExt;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status.lines().find_map(|l| l.strip_prefix("Umask:")).map(|m| u32::from_str_radix(m.trim(), 8).unwrap()).unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o666 & !umask);
}
