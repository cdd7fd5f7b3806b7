//! Tests of the layer writer, and helpers other modules' tests share
//! (contents by path, entry builders, reading a layer back).

use std::collections::HashMap;
use std::io::{self, Read, Write};

use kiln_protocol::{EntryKind, LayerEntry, Xattr};

use super::{write_layer, ContentSource, LayerOptions, LayerTarError};
use crate::oci::layer::{Compression, Layer};
use crate::oci::store::Store;

/// Contents by path; records the order `open` was called in.
#[derive(Default)]
pub(crate) struct MapContents {
    pub files: HashMap<String, Vec<u8>>,
    pub opened: Vec<String>,
}

impl ContentSource for MapContents {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        self.opened.push(entry.path.clone());
        let data = self.files.get(&entry.path).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, entry.path.clone()))?;
        Ok(Box::new(&data[..]))
    }
}

pub(crate) fn entry(path: &str, kind: EntryKind) -> LayerEntry {
    let mode = match kind {
        EntryKind::Dir { .. } => 0o755,
        EntryKind::Symlink { .. } => 0o777,
        _ => 0o644,
    };
    LayerEntry { path: path.into(), kind, mode, uid: 0, gid: 0, mtime: 1_700_000_000, mtime_nsec: 123, xattrs: vec![] }
}
pub(crate) fn dir(path: &str) -> LayerEntry {
    entry(path, EntryKind::Dir { opaque: false })
}
pub(crate) fn file(path: &str, data: &[u8], c: &mut MapContents) -> LayerEntry {
    c.files.insert(path.into(), data.to_vec());
    entry(path, EntryKind::File { size: data.len() as u64, link: None })
}

#[derive(Debug, PartialEq)]
pub(crate) struct Read_ {
    pub path: String,
    pub kind: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: String,
    pub data: Vec<u8>,
    pub pax: Vec<(String, Vec<u8>)>,
    pub dev: (u32, u32),
    pub names: (Vec<u8>, Vec<u8>),
}

pub(crate) fn uncompressed(store: &Store, layer: &Layer) -> Vec<u8> {
    let blob = store.read_blob(layer.descriptor.digest(), Some(layer.descriptor.size())).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut out).unwrap();
    out
}

pub(crate) fn read_tar(bytes: &[u8]) -> Vec<Read_> {
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let pax = match e.pax_extensions().unwrap() {
            Some(p) => p.map(|x| x.unwrap()).map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec())).collect(),
            None => vec![],
        };
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Read_ {
            path: String::from_utf8(e.path_bytes().to_vec()).unwrap(),
            kind: h.entry_type().as_byte(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: e.link_name_bytes().map(|l| String::from_utf8(l.to_vec()).unwrap()).unwrap_or_default(),
            data,
            pax,
            dev: (h.device_major().unwrap().unwrap_or(0), h.device_minor().unwrap().unwrap_or(0)),
            names: (h.username_bytes().unwrap_or_default().to_vec(), h.groupname_bytes().unwrap_or_default().to_vec()),
        });
    }
    out
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path().join("store")).unwrap();
    (d, s)
}

fn write(store: &Store, entries: &mut Vec<LayerEntry>, c: &mut MapContents, opts: LayerOptions) -> Layer {
    write_layer(store, entries, c, &opts).unwrap().expect("a layer")
}

#[test]
fn empty_diff_adds_no_layer() {
    let (_d, s) = store();
    let mut c = MapContents::default();
    assert!(write_layer(&s, &mut vec![], &mut c, &LayerOptions::default()).unwrap().is_none());
    // Only the root directory is no diff either.
    assert!(write_layer(&s, &mut vec![dir("")], &mut c, &LayerOptions::default()).unwrap().is_none());
    assert_eq!(std::fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(), 0);
}

#[test]
fn entries_are_sorted_parents_first_by_component() {
    let (_d, s) = store();
    let mut c = MapContents::default();
    let mut entries = vec![
        file("a.b", b"x", &mut c),
        file("a/b", b"hello", &mut c),
        dir("a"),
        file("a/b.c", b"", &mut c),
        dir("A"),
    ];
    let layer = write(&s, &mut entries, &mut c, LayerOptions::default());
    let got = read_tar(&uncompressed(&s, &layer));
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["A/", "a/", "a/b", "a/b.c", "a.b"]);
    assert_eq!(c.opened, ["a/b", "a/b.c", "a.b"], "contents are opened in written order");
    let f = &got[2];
    assert_eq!((f.kind, f.mode, f.data.as_slice(), f.mtime), (b'0', 0o644, &b"hello"[..], 1_700_000_000));
    assert_eq!(f.names, (vec![], vec![]), "uname/gname stay empty");
    assert_eq!(layer.descriptor.media_type().to_string(), crate::oci::media::OCI_LAYER_GZIP);
}

#[test]
fn whiteouts_opaque_dirs_links_devices_and_fifos() {
    let (_d, s) = store();
    let mut c = MapContents::default();
    let mut entries = vec![
        entry("etc/gone", EntryKind::Whiteout),
        entry("top", EntryKind::Whiteout),
        entry("var", EntryKind::Dir { opaque: true }),
        file("var/new", b"n", &mut c),
        entry("etc", EntryKind::Dir { opaque: false }),
        entry("etc/sh", EntryKind::Symlink { target: "/bin/busybox".into() }),
        entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }),
        entry("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 }),
        entry("dev/fifo", EntryKind::Fifo),
        entry("dev/sock", EntryKind::Socket),
    ];
    let layer = write(&s, &mut entries, &mut c, LayerOptions::default());
    let got = read_tar(&uncompressed(&s, &layer));
    let summary: Vec<(&str, u8, &str)> = got.iter().map(|r| (r.path.as_str(), r.kind, r.link.as_str())).collect();
    assert_eq!(
        summary,
        [
            ("dev/fifo", b'6', ""),
            ("dev/null", b'3', ""),
            ("dev/sda", b'4', ""),
            ("etc/", b'5', ""),
            ("etc/.wh.gone", b'0', ""),
            ("etc/sh", b'2', "/bin/busybox"),
            (".wh.top", b'0', ""),
            ("var/", b'5', ""),
            ("var/.wh..wh..opq", b'0', ""),
            ("var/new", b'0', ""),
        ]
    );
    assert_eq!(got[1].dev, (1, 3));
    assert_eq!(got[2].dev, (8, 0));
    let wh = &got[4];
    assert_eq!((wh.mode, wh.uid, wh.gid, wh.data.len()), (0, 0, 0, 0));
}

#[test]
fn hardlinks_point_at_the_first_written_path() {
    let (_d, s) = store();
    let mut c = MapContents::default();
    let mut content = file("z/orig", b"shared bytes", &mut c);
    content.mode = 0o755;
    let link = |p: &str, to: &str| {
        let mut e = entry(p, EntryKind::File { size: 12, link: Some(to.into()) });
        e.mode = 0o755;
        e
    };
    // The manifest links to earlier entries (z/orig first), but sorting puts a/first before it.
    let mut entries = vec![dir("z"), dir("a"), content, link("a/first", "z/orig"), link("m/chain", "a/first")];
    let layer = write(&s, &mut entries, &mut c, LayerOptions::default());
    let got = read_tar(&uncompressed(&s, &layer));
    let summary: Vec<(&str, u8, &str, &[u8])> =
        got.iter().map(|r| (r.path.as_str(), r.kind, r.link.as_str(), r.data.as_slice())).collect();
    assert_eq!(
        summary,
        [
            ("a/", b'5', "", &b""[..]),
            ("a/first", b'0', "", &b"shared bytes"[..]),
            ("m/chain", b'1', "a/first", &b""[..]),
            ("z/", b'5', "", &b""[..]),
            ("z/orig", b'1', "a/first", &b""[..]),
        ]
    );
    assert_eq!(c.opened, ["z/orig"], "content is asked for with the entry that holds it");
    assert_eq!(got[1].mode, 0o755);
}

#[test]
fn a_file_named_like_a_whiteout_is_refused_not_turned_into_one() {
    let (_d, s) = store();
    for kind in [EntryKind::File { size: 0, link: None }, EntryKind::Dir { opaque: false }, EntryKind::Symlink { target: "x".into() }] {
        let mut c = MapContents::default();
        c.files.insert("etc/.wh.passwd".into(), Vec::new());
        let mut entries = vec![dir("etc"), entry("etc/.wh.passwd", kind.clone())];
        let err = write_layer(&s, &mut entries, &mut c, &LayerOptions::default()).unwrap_err();
        assert!(matches!(err, LayerTarError::ReservedName { ref path } if path == "etc/.wh.passwd"), "{kind:?}: {err}");
    }
    // A real whiteout of that path is still written.
    let mut entries = vec![dir("etc"), entry("etc/passwd", EntryKind::Whiteout)];
    write_layer(&s, &mut entries, &mut MapContents::default(), &LayerOptions::default()).unwrap();
}

#[test]
fn hardlink_to_a_missing_entry_is_an_error() {
    let (_d, s) = store();
    let mut c = MapContents::default();
    let mut entries = vec![entry("a", EntryKind::File { size: 1, link: Some("nope".into()) })];
    let err = write_layer(&s, &mut entries, &mut c, &LayerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("a:") && err.to_string().contains("nope"), "{err}");
}

#[test]
fn xattrs_long_names_and_large_ids_use_pax() {
    let (_d, s) = store();
    let mut c = MapContents::default();
    let mut ping = file("usr/bin/ping", b"ELF", &mut c);
    ping.xattrs = vec![
        Xattr { name: "security.capability".into(), value: vec![1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0xff, 0x0b] },
        Xattr { name: "user.note".into(), value: b"hi".to_vec() },
    ];
    let deep = format!("{}/{}", "d".repeat(120), "f".repeat(90)); // fits ustar prefix + name
    let long = format!("{}/{}", "l".repeat(200), "n".repeat(120)); // needs PAX
    let target = "t".repeat(150);
    let mut big = file("big-ids", b"", &mut c);
    big.uid = 3_000_000;
    big.gid = 70_000;
    let mut entries = vec![
        ping,
        file(&deep, b"deep", &mut c),
        file(&long, b"long", &mut c),
        entry("ln", EntryKind::Symlink { target: target.clone() }),
        file("ünï", b"utf8", &mut c),
        entry("lnü", EntryKind::Symlink { target: "zïel".into() }),
        big,
    ];
    let layer = write(&s, &mut entries, &mut c, LayerOptions::default());
    let bytes = uncompressed(&s, &layer);
    let got = read_tar(&bytes);
    let by: HashMap<&str, &Read_> = got.iter().map(|r| (r.path.as_str(), r)).collect();
    let p = by["usr/bin/ping"];
    assert_eq!(
        p.pax,
        [
            ("SCHILY.xattr.security.capability".to_string(), vec![1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0xff, 0x0b]),
            ("SCHILY.xattr.user.note".to_string(), b"hi".to_vec()),
        ]
    );
    assert_eq!(by[deep.as_str()].data, b"deep");
    assert!(by[deep.as_str()].pax.is_empty(), "a path that fits name+prefix needs no PAX");
    assert_eq!(by[long.as_str()].data, b"long");
    assert_eq!(by["ln"].link, target);
    assert_eq!(by["ünï"].data, b"utf8");
    assert!(by["ünï"].pax.iter().any(|(k, v)| k == "path" && v == "ünï".as_bytes()), "non-ASCII names go to PAX");
    assert_eq!(by["lnü"].link, "zïel");
    assert!(by["lnü"].pax.iter().any(|(k, _)| k == "linkpath"));
    let b = by["big-ids"];
    assert!(b.pax.contains(&("uid".into(), b"3000000".to_vec())), "{:?}", b.pax);
    assert_eq!(b.gid, 70_000, "a gid that fits 7 octal digits stays in the header");
    // GNU tar agrees on the names, owners and xattrs.
    if let Ok(out) = std::process::Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-tvf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(&bytes)?;
            child.wait_with_output()
        })
    {
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "GNU tar rejected the layer: {listing}");
        assert!(listing.contains(&long), "{listing}");
        assert!(listing.contains("3000000/70000"), "{listing}");
    }
}

#[test]
fn mtimes_are_whole_seconds_clamped_to_source_date_epoch() {
    let (_d, s) = store();
    let mut c = MapContents::default();
    let mut old = file("old", b"o", &mut c);
    old.mtime = 1000;
    let mut new = file("new", b"n", &mut c);
    new.mtime = 2_000_000_000;
    let mut entries = vec![old, new];
    let opts = LayerOptions { source_date_epoch: Some(1_500_000_000), ..Default::default() };
    let got = read_tar(&uncompressed(&s, &write(&s, &mut entries, &mut c, opts)));
    let m: Vec<(&str, u64)> = got.iter().map(|r| (r.path.as_str(), r.mtime)).collect();
    assert_eq!(m, [("new", 1_500_000_000), ("old", 1000)]);
    assert!(got.iter().all(|r| r.pax.is_empty()), "no PAX mtime with nanoseconds");
}

#[test]
fn equal_input_gives_equal_digests() {
    let (_d, s) = store();
    let make = |order: bool| {
        let mut c = MapContents::default();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect();
        let mut v = vec![dir("d"), file("d/big", &big, &mut c), file("d/small", b"s", &mut c)];
        if order {
            v.reverse();
        }
        (v, c)
    };
    let (mut a, mut ca) = make(false);
    let (mut b, mut cb) = make(true);
    for comp in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let opts = LayerOptions { compression: comp, ..Default::default() };
        let la = write(&s, &mut a, &mut ca, opts);
        let lb = write(&s, &mut b, &mut cb, opts);
        assert_eq!(la.descriptor.digest(), lb.descriptor.digest(), "{comp:?}");
        assert_eq!(la.diff_id, lb.diff_id);
    }
}

#[test]
fn content_longer_or_shorter_than_the_manifest_is_an_error() {
    let (_d, s) = store();
    for (claimed, actual) in [(10u64, 4u64), (2, 4)] {
        let mut c = MapContents::default();
        let mut e = file("etc/f", &vec![b'x'; actual as usize], &mut c);
        e.kind = EntryKind::File { size: claimed, link: None };
        let err = write_layer(&s, &mut vec![e], &mut c, &LayerOptions::default()).unwrap_err();
        match err {
            LayerTarError::SizeMismatch { path, expected, actual: got } => {
                assert_eq!((path.as_str(), expected, got), ("etc/f", claimed, actual));
            }
            other => panic!("expected a size mismatch, got {other}"),
        }
    }
    assert_eq!(std::fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(), 0, "no blob from a failed layer");
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0, "no temp file left behind");
}

#[test]
fn unnormalised_or_duplicate_paths_are_refused() {
    let (_d, s) = store();
    for bad in ["/abs", "a/../b", "a//b", "./a", "a/"] {
        let mut c = MapContents::default();
        let err = write_layer(&s, &mut vec![dir(bad)], &mut c, &LayerOptions::default()).unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
    }
    let mut c = MapContents::default();
    assert!(write_layer(&s, &mut vec![dir("a"), dir("a")], &mut c, &LayerOptions::default()).is_err());
}
