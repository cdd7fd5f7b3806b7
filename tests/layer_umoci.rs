#![cfg(unix)]
//! Layers written by kiln's tar writer, unpacked by umoci (the validator
//! that checks diff_ids), compared with kiln's own merged view (LayerStack).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use kiln::engine::layer_tar::{write_layer, ContentSource, LayerOptions};
use kiln::engine::rootfs::LayerStack;
use kiln::engine::{EntryKind, LayerEntry};
use kiln::oci::layout::{self, ExportEntry, Format};
use kiln::oci::{Compression, Descriptor, MediaType, Store};
use support::*;

static NEVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Default)]
struct Contents(HashMap<String, Vec<u8>>);

impl ContentSource for Contents {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(&self.0[&entry.path][..]))
    }
}

fn e(path: &str, kind: EntryKind, mode: u32) -> LayerEntry {
    LayerEntry { path: path.into(), kind, mode, uid: 0, gid: 0, mtime: 1_700_000_000, mtime_nsec: 0, xattrs: vec![] }
}
fn d(path: &str) -> LayerEntry {
    e(path, EntryKind::Dir { opaque: false }, 0o755)
}
fn f(c: &mut Contents, path: &str, data: &[u8], mode: u32) -> LayerEntry {
    c.0.insert(path.into(), data.to_vec());
    e(path, EntryKind::File { size: data.len() as u64, link: None }, mode)
}
fn hard(path: &str, to: &str, size: u64) -> LayerEntry {
    e(path, EntryKind::File { size, link: Some(to.into()) }, 0o755)
}
fn sym(path: &str, to: &str) -> LayerEntry {
    e(path, EntryKind::Symlink { target: to.into() }, 0o777)
}

fn image(store: &Store, layers: Vec<(Vec<LayerEntry>, Contents, Compression)>) -> Descriptor {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (mut entries, mut contents, compression) in layers {
        let opts = LayerOptions { compression, source_date_epoch: None };
        let layer = write_layer(store, &mut entries, &mut contents, &opts).unwrap().unwrap();
        diff_ids.push(layer.diff_id.to_string());
        descs.push(layer.descriptor);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = store.put_json(&config, MediaType::ImageConfig).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": descs,
    });
    store.put_json(&manifest, MediaType::ImageManifest).unwrap()
}

/// Every path under `root` (relative), with its metadata, symlinks not followed.
fn tree(root: &Path) -> BTreeMap<String, std::fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            }
            out.insert(entry.path().strip_prefix(root).unwrap().to_string_lossy().into_owned(), meta);
        }
    }
    out
}

#[test]
fn umoci_unpacks_kiln_layers_like_kilns_own_view() {
    let umoci = require("umoci", "umoci");
    let src = temp_store();
    let store = &src.store;
    let long = format!("deep/{}/{}", "x".repeat(120), "y".repeat(140));

    let mut c = Contents::default();
    let lower = vec![
        d("bin"),
        f(&mut c, "bin/busybox", b"#!busybox\n", 0o755),
        hard("bin/sh", "bin/busybox", 10),
        hard("bin/ash", "bin/sh", 10),
        sym("bin/ls", "busybox"),
        sym("lib", "usr/lib"),
        d("usr"),
        d("usr/lib"),
        f(&mut c, "usr/lib/libc.so", &noise(300_000, 9), 0o644),
        d("etc"),
        f(&mut c, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644),
        f(&mut c, "etc/shadow", b"root:*:1::::::\n", 0o640),
        d("var"),
        d("var/cache"),
        f(&mut c, "var/cache/a", b"a", 0o644),
        d("var/cache/sub"),
        f(&mut c, "var/cache/sub/b", b"b", 0o644),
        d("deep"),
        d(&format!("deep/{}", "x".repeat(120))),
        f(&mut c, &long, b"long path", 0o600),
        e("tmp", EntryKind::Dir { opaque: false }, 0o1777),
        f(&mut c, "usr/setuid", b"su", 0o4755),
    ];
    let mut c2 = Contents::default();
    let upper = vec![
        e("etc/shadow", EntryKind::Whiteout, 0),
        e("var/cache", EntryKind::Dir { opaque: true }, 0o700),
        f(&mut c2, "var/cache/fresh", b"fresh", 0o644),
        f(&mut c2, "etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644),
        e("bin/ls", EntryKind::Whiteout, 0),
    ];
    // umoci 0.4.7 reads gzip and plain tar layers, not zstd.
    let manifest = image(store, vec![(lower, c, Compression::Gzip), (upper, c2, Compression::None)]);

    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    let entry = ExportEntry { descriptor: manifest.clone(), ref_name: Some("t".into()), repo_tag: None };
    layout::export(store, &[entry], Format::OciDir, &dir, None, false, &NEVER).unwrap();
    let bundle = out.path().join("bundle");
    run(Command::new(&umoci).args(["unpack", "--rootless", "--image"]).arg(format!("{}:t", dir.display())).arg(&bundle));
    let rootfs = bundle.join("rootfs");

    let read = |p: &str| std::fs::read(rootfs.join(p)).unwrap();
    let mode = |p: &str| rootfs.join(p).symlink_metadata().unwrap().permissions().mode() & 0o7777;
    assert_eq!(read("bin/busybox"), b"#!busybox\n");
    let ino = |p: &str| rootfs.join(p).symlink_metadata().unwrap().ino();
    assert_eq!(ino("bin/sh"), ino("bin/busybox"), "hardlinks share an inode");
    assert_eq!(ino("bin/ash"), ino("bin/busybox"));
    assert_eq!(std::fs::read_link(rootfs.join("lib")).unwrap(), Path::new("usr/lib"));
    assert_eq!(read("usr/lib/libc.so"), noise(300_000, 9));
    assert_eq!(read(&long), b"long path");
    assert_eq!((mode(&long), mode("usr/lib/libc.so"), mode("tmp"), mode("usr/setuid")), (0o600, 0o644, 0o1777, 0o4755));
    assert!(!rootfs.join("etc/shadow").exists(), "whiteout applied");
    assert!(rootfs.join("bin/ls").symlink_metadata().is_err(), "whiteout of a symlink applied");
    assert!(!rootfs.join("var/cache/a").exists() && !rootfs.join("var/cache/sub").exists(), "opaque dir applied");
    assert_eq!(read("var/cache/fresh"), b"fresh");
    assert_eq!(mode("var/cache"), 0o700);
    assert!(String::from_utf8(read("etc/passwd")).unwrap().contains("app:x:1000"));

    // kiln's merged view of the same image agrees with umoci's unpacked tree.
    let img = store.image(&manifest, None).unwrap();
    let stack = LayerStack::open(store, img.manifest.layers()).unwrap();
    let unpacked = tree(&rootfs);
    let view: Vec<&LayerEntry> = stack.walk("");
    assert_eq!(view.iter().map(|e| e.path.clone()).collect::<std::collections::BTreeSet<_>>(), unpacked.keys().cloned().collect());
    for entry in view {
        let meta = &unpacked[&entry.path];
        assert_eq!(meta.permissions().mode() & 0o7777, entry.mode, "{}", entry.path);
        match &entry.kind {
            EntryKind::File { size, .. } => {
                assert!(meta.is_file(), "{}", entry.path);
                assert_eq!(stack.read_file(store, &entry.path).unwrap().unwrap(), read(&entry.path), "{}", entry.path);
                assert_eq!(*size, meta.len());
            }
            EntryKind::Dir { .. } => assert!(meta.is_dir(), "{}", entry.path),
            EntryKind::Symlink { target } => {
                assert_eq!(std::fs::read_link(rootfs.join(&entry.path)).unwrap(), Path::new(target));
            }
            other => panic!("unexpected {other:?} at {}", entry.path),
        }
    }
}
