//! Images checked with Debian's erofs-utils (1.5): `fsck.erofs` on every
//! image, `fsck.erofs --extract` compared with the entries (modes, owners,
//! mtimes, contents, link targets, device numbers), and `dump.erofs` for
//! what extraction does not keep (nids of hardlinks, directory listings,
//! xattr sizes; xattr values are read at the nid dump.erofs reports). The
//! tests fail, not skip, without erofs-utils. `mounted_image_matches`
//! (ignored: needs root and loop devices) mounts an image and compares it
//! with `getfattr` too.

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use kiln_protocol::{EntryKind, LayerEntry, Xattr};

use super::layout::BLOCK;
use super::{from_entries, from_tar, ErofsError};
use crate::engine::layer_tar::tests::{dir, entry, file, MapContents};

fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is missing: these tests need Debian's erofs-utils (apt-get install erofs-utils)");
    Command::new(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Writes the image, runs `fsck.erofs` and extracts it; returns the image
/// path and the extraction directory.
fn check(image: Vec<u8>, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    assert_eq!(image.len() as u64 % BLOCK, 0, "an image is whole blocks");
    assert_eq!(super::layout::image_len(&image), Some(image.len() as u64), "the superblock gives the image's length");
    let mut zeroed = image.clone();
    zeroed[1024..1028].fill(0);
    assert_eq!(super::layout::image_len(&zeroed), None, "no magic, no length");
    let img = dir.join("image.erofs");
    fs::write(&img, image).unwrap();
    run(tool("fsck.erofs").arg(&img));
    let out = dir.join("out");
    run(tool("fsck.erofs").arg(format!("--extract={}", out.display())).arg("--preserve").arg(&img));
    (img, out)
}

fn image_of(entries: &mut [LayerEntry], contents: &mut MapContents) -> Vec<u8> {
    let (out, _) = from_entries(entries, contents, Cursor::new(Vec::new())).unwrap();
    out.into_inner()
}

/// `dump.erofs --path`: (nid, links, xattr size).
fn dump(img: &Path, path: &str) -> (u64, u64, u64) {
    let text = run(tool("dump.erofs").arg(format!("--path={path}")).arg(img));
    let field = |key: &str| -> u64 {
        let at = text.find(key).unwrap_or_else(|| panic!("no {key} in:\n{text}")) + key.len();
        text[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (field("NID:"), field("Links:"), field("Xattr size:"))
}

/// The start of the metadata area (`dump.erofs -s`), in bytes.
fn meta_start(img: &Path) -> usize {
    let text = run(tool("dump.erofs").arg("-s").arg(img));
    let key = "inode metadata start block:";
    let at = text.find(key).unwrap() + key.len();
    let block: u64 = text[at..].split_whitespace().next().unwrap().parse().unwrap();
    (block * BLOCK) as usize
}

/// Permission bits with setuid/setgid/sticky, read from `i_mode` of the
/// inode dump.erofs names (its `Access:` and extraction drop those bits).
fn access(img: &Path, path: &str) -> u32 {
    let at = meta_start(img) + dump(img, path).0 as usize * 32;
    let bytes = fs::read(img).unwrap();
    u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]) as u32 & 0o7777
}

/// The inline xattrs of the inode at `nid` (shared xattrs are not written).
fn xattrs_at(img: &Path, nid: u64) -> BTreeMap<String, Vec<u8>> {
    let bytes = fs::read(img).unwrap();
    let base = meta_start(img) + nid as usize * 32;
    let format = u16::from_le_bytes([bytes[base], bytes[base + 1]]);
    let icount = u16::from_le_bytes([bytes[base + 2], bytes[base + 3]]) as usize;
    let mut out = BTreeMap::new();
    if icount == 0 {
        return out;
    }
    let start = base + if format & 1 == 1 { 64 } else { 32 };
    let end = start + 12 + (icount - 1) * 4;
    assert_eq!(bytes[start + 4], 0, "no shared xattrs");
    let mut p = start + 12;
    while p < end {
        let (len, index) = (bytes[p] as usize, bytes[p + 1]);
        let vlen = u16::from_le_bytes([bytes[p + 2], bytes[p + 3]]) as usize;
        let prefix = match index {
            1 => "user.",
            2 => "system.posix_acl_access",
            3 => "system.posix_acl_default",
            4 => "trusted.",
            6 => "security.",
            i => panic!("xattr index {i}"),
        };
        let name = format!("{prefix}{}", String::from_utf8_lossy(&bytes[p + 4..p + 4 + len]));
        out.insert(name, bytes[p + 4 + len..p + 4 + len + vlen].to_vec());
        p += (4 + len + vlen).div_ceil(4) * 4;
    }
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 32) as u8 ^ seed).collect()
}

fn with(mut e: LayerEntry, f: impl FnOnce(&mut LayerEntry)) -> LayerEntry {
    f(&mut e);
    e
}

/// Everything a layer holds, checked file by file after extraction.
#[test]
fn entries_survive_fsck_and_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = MapContents::default();
    let long_name = "n".repeat(255);
    let sizes = [0usize, 1, 2048, 2049, 4095, 4096, 4097, 3 * 4096 + 2500, 100_000, 1 << 20];
    let mut entries = vec![
        with(dir(""), |e| e.mode = 0o700),
        dir("a"),
        dir("a/b"),
        with(dir("a/b/c"), |e| e.mode = 0o1777),
        with(entry("a/b/c/deep", EntryKind::File { size: 5, link: None }), |e| {
            e.uid = 100_000;
            e.gid = 4_000_000_000;
            e.mtime = 4_102_444_800; // 2100
            e.mtime_nsec = 999_999_999;
            e.mode = 0o4755;
        }),
        file(&format!("a/{long_name}"), b"long name", &mut c),
        entry("a/sym", EntryKind::Symlink { target: "b/c/deep".into() }),
        entry("a/longsym", EntryKind::Symlink { target: "x/".repeat(1500) }),
        entry("a/link", EntryKind::File { size: 5, link: Some("a/b/c/deep".into()) }),
        entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }),
        entry("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 }),
        entry("dev/big", EntryKind::CharDevice { major: 4000, minor: 300_000 }),
        entry("dev/fifo", EntryKind::Fifo),
        entry("dev/socket", EntryKind::Socket),
        with(entry("old", EntryKind::Fifo), |e| e.mtime = 1),
    ];
    c.files.insert("a/b/c/deep".into(), b"deep!".to_vec());
    for (i, size) in sizes.iter().enumerate() {
        entries.push(with(file(&format!("sizes/f{size}"), &pattern(*size, i as u8), &mut c), |e| e.uid = i as u32));
    }
    let mut input = entries.clone();
    let (img, out) = check(image_of(&mut input, &mut c), tmp.path());

    for e in &entries {
        let path = out.join(&e.path);
        if matches!(e.kind, EntryKind::Socket) {
            assert!(!path.exists(), "sockets are skipped like in layer tars");
            continue;
        }
        let md = fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("{}: {err}", e.path));
        if let EntryKind::File { link: Some(target), .. } = &e.kind {
            assert_eq!(fs::read(&path).unwrap(), c.files[target]);
            let (a, links, _) = dump(&img, &format!("/{}", e.path));
            let (b, _, _) = dump(&img, &format!("/{target}"));
            assert_eq!((a, links), (b, 2), "a hardlink shares the inode (and its metadata)");
            continue;
        }
        // Extraction chmods before chowning, which clears setuid: the full mode from dump.erofs.
        assert_eq!(md.mode() & 0o777, e.mode & 0o777, "{} mode", e.path);
        assert_eq!(access(&img, &format!("/{}", e.path)), e.mode, "{} mode", e.path);
        assert_eq!((md.uid(), md.gid()), (e.uid, e.gid), "{} owner", e.path);
        if !md.is_symlink() {
            assert_eq!(md.mtime(), e.mtime, "{} mtime", e.path);
        }
        match &e.kind {
            EntryKind::File { link: None, size } => {
                assert_eq!(&fs::read(&path).unwrap(), &c.files[&e.path], "{} contents", e.path);
                assert_eq!(md.len(), *size);
            }
            EntryKind::Dir { .. } => assert!(md.is_dir()),
            EntryKind::Symlink { target } => assert_eq!(fs::read_link(&path).unwrap().to_str().unwrap(), target),
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                assert!(if matches!(e.kind, EntryKind::CharDevice { .. }) { md.file_type().is_char_device() } else { md.file_type().is_block_device() });
                assert_eq!((libc::major(md.rdev()), libc::minor(md.rdev())), (*major, *minor), "{} rdev", e.path);
            }
            EntryKind::Fifo => assert!(md.file_type().is_fifo()),
            _ => unreachable!(),
        }
    }
    // Directory link counts: 2 + subdirectories.
    assert_eq!(dump(&img, "/a").1, 3);
    assert_eq!(dump(&img, "/").1, 2 + 3, "a, dev, sizes");
}

#[test]
fn a_directory_spanning_many_blocks_lists_every_name_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = MapContents::default();
    let mut entries = vec![dir("big")];
    // 1,500 entries of 12 + 40..=140 bytes: about 25 directory blocks.
    let names: Vec<String> = (0..1500).map(|i| format!("{}{i:05}", "x".repeat(35 + i % 100))).collect();
    for (i, name) in names.iter().enumerate() {
        entries.push(file(&format!("big/{name}"), &pattern(i % 300, i as u8), &mut c));
    }
    entries.push(dir("big/-before-dot"));
    let (img, out) = check(image_of(&mut entries, &mut c), tmp.path());
    let listed = run(tool("dump.erofs").arg("--ls").arg("--path=/big").arg(&img));
    let after_header = listed.split_once("FILENAME").expect("a dump.erofs listing").1;
    let dotdot = after_header.lines().find(|l| l.split_whitespace().nth(2) == Some("..")).expect("a `..` entry");
    let dotdot_nid: u64 = dotdot.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(dotdot_nid, dump(&img, "/").0, "`..` of a top-level directory is the root");
    assert_ne!(dotdot_nid, 0, "no inode is numbered 0: readdir skips entries of inode 0");
    let listed: Vec<&str> = after_header.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let mut expected: Vec<&str> = names.iter().map(String::as_str).chain([".", "..", "-before-dot"]).collect();
    expected.sort();
    assert_eq!(listed.len(), expected.len());
    assert!(listed == expected, "dump.erofs lists the entries of every block, in byte order");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(fs::read(out.join("big").join(name)).unwrap(), pattern(i % 300, i as u8));
    }
    let size = fs::metadata(&img).unwrap().len();
    assert!(size < 2 << 20, "small files' tails are inline: {size} bytes");
}

#[test]
fn xattrs_opaque_dirs_and_whiteouts_from_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = MapContents::default();
    let cap = b"\x01\x00\x00\x02\x0a\x20\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    let mut entries = vec![
        entry("etc", EntryKind::Dir { opaque: true }),
        with(file("usr/bin/ping", b"elf", &mut c), |e| {
            e.xattrs = vec![
                Xattr { name: "security.capability".into(), value: cap.clone() },
                Xattr { name: "user.comment".into(), value: vec![b'v'; 3000] },
                Xattr { name: "trusted.overlay.redirect".into(), value: b"/x".to_vec() },
                Xattr { name: "weird.name".into(), value: b"dropped".to_vec() },
            ]
        }),
        entry("etc/gone", EntryKind::Whiteout),
        entry("top", EntryKind::Whiteout),
    ];
    let (img, out) = check(image_of(&mut entries, &mut c), tmp.path());
    for wh in ["etc/gone", "top"] {
        let md = fs::symlink_metadata(out.join(wh)).unwrap();
        assert!(md.file_type().is_char_device() && md.rdev() == 0, "{wh} is a 0/0 whiteout");
    }
    let (nid, _, size) = dump(&img, "/etc");
    assert!(size > 0);
    assert_eq!(xattrs_at(&img, nid), BTreeMap::from([("trusted.overlay.opaque".into(), b"y".to_vec())]));
    let (nid, _, _) = dump(&img, "/usr/bin/ping");
    let expected = BTreeMap::from([("security.capability".to_string(), cap), ("user.comment".into(), vec![b'v'; 3000])]);
    assert_eq!(xattrs_at(&img, nid), expected, "overlayfs' own and unknown prefixes are dropped");
    assert_eq!(fs::read(out.join("usr/bin/ping")).unwrap(), b"elf", "the inline tail follows a large xattr area");
}

fn tar_member(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8], f: impl FnOnce(&mut tar::Header)) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    f(&mut h);
    b.append_data(&mut h, path, data).unwrap();
}

#[test]
fn a_layer_tar_converts_with_oci_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType as T;
    tar_member(&mut b, "./", T::Directory, b"", |h| h.set_mode(0o755));
    tar_member(&mut b, "./usr/", T::Directory, b"", |h| h.set_mode(0o755));
    tar_member(&mut b, "./usr/.wh..wh..opq", T::Regular, b"", |_| {});
    tar_member(&mut b, "./usr/lib/libc.so", T::Regular, &pattern(70_000, 3), |h| h.set_uid(70_000));
    tar_member(&mut b, "./etc/.wh.passwd", T::Regular, b"", |_| {});
    tar_member(&mut b, ".wh.tmp", T::Regular, b"", |_| {});
    tar_member(&mut b, "etc/.wh..wh.plnk", T::Regular, b"", |_| {});
    tar_member(&mut b, "etc/hosts", T::Regular, b"old", |_| {});
    tar_member(&mut b, "etc/hosts", T::Regular, b"127.0.0.1 localhost\n", |_| {});
    tar_member(&mut b, "dev/console", T::Char, b"", |h| {
        h.set_device_major(5).unwrap();
        h.set_device_minor(1).unwrap();
    });
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::Link);
    h.set_size(0);
    b.append_link(&mut h, "usr/lib/libc.so.6", "./usr/lib/libc.so").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "lib", "usr/lib").unwrap();
    // A PAX xattr with a newline in its value, as some capability sets have.
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(T::Regular);
    h.set_mode(0o755);
    h.set_size(3);
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\n\x02"[..])]).unwrap();
    b.append_data(&mut h, "usr/bin/ping", &b"elf"[..]).unwrap();
    let tar = b.into_inner().unwrap();

    let (image, summary) = from_tar(&tar[..], Cursor::new(Vec::new())).unwrap();
    assert_eq!(summary.dropped_xattrs, 0);
    let (img, out) = check(image.into_inner(), tmp.path());
    assert_eq!(fs::read(out.join("usr/lib/libc.so")).unwrap(), pattern(70_000, 3));
    assert_eq!(fs::metadata(out.join("usr/lib/libc.so")).unwrap().uid(), 70_000);
    assert_eq!(fs::read(out.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n", "a later member replaces an earlier one");
    assert_eq!(fs::read_link(out.join("lib")).unwrap(), Path::new("usr/lib"));
    let con = fs::symlink_metadata(out.join("dev/console")).unwrap();
    assert_eq!((libc::major(con.rdev()), libc::minor(con.rdev())), (5, 1));
    for wh in ["etc/passwd", "tmp"] {
        let md = fs::symlink_metadata(out.join(wh)).unwrap();
        assert!(md.file_type().is_char_device() && md.rdev() == 0, "{wh} is a whiteout");
    }
    let mut names: Vec<String> = fs::read_dir(out.join("etc")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["hosts", "passwd"], "no .wh. names are left");
    assert_eq!(dump(&img, "/usr/lib/libc.so").0, dump(&img, "/usr/lib/libc.so.6").0);
    assert_eq!(xattrs_at(&img, dump(&img, "/usr").0), BTreeMap::from([("trusted.overlay.opaque".into(), b"y".to_vec())]));
    assert_eq!(xattrs_at(&img, dump(&img, "/usr/bin/ping").0), BTreeMap::from([("security.capability".into(), b"\x01\n\x02".to_vec())]));
    assert_eq!(fs::metadata(out.join("usr/bin")).unwrap().mode() & 0o7777, 0o755, "implicit parents are 0755");
}

#[test]
fn unsafe_or_inconsistent_input_is_an_error() {
    let mut c = MapContents::default();
    let err = |entries: &mut Vec<LayerEntry>, c: &mut MapContents| -> ErofsError {
        from_entries(entries, c, Cursor::new(Vec::new())).err().unwrap()
    };
    let e = err(&mut vec![file("a/../../etc/passwd", b"x", &mut c)], &mut c);
    assert!(e.to_string().contains(".."), "{e}");
    let mut short = file("short", b"abc", &mut c);
    short.kind = EntryKind::File { size: 5, link: None };
    assert!(matches!(err(&mut vec![short.clone()], &mut c), ErofsError::SizeMismatch { .. }));
    short.kind = EntryKind::File { size: 2, link: None };
    assert!(matches!(err(&mut vec![short], &mut c), ErofsError::SizeMismatch { .. }));
    let e = err(&mut vec![entry("l", EntryKind::File { size: 0, link: Some("missing".into()) })], &mut c);
    assert!(e.to_string().contains("hardlink target"), "{e}");
    let e = err(&mut vec![entry("s", EntryKind::Symlink { target: "/etc".into() }), file("s/passwd", b"x", &mut c)], &mut c);
    assert!(e.to_string().contains("not a directory"), "{e}");
    let e = err(&mut vec![file(&"n".repeat(256), b"", &mut c)], &mut c);
    assert!(e.to_string().contains("255"), "{e}");
    // A tar symlink is never followed: `lib -> /etc` then `lib/passwd`.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "lib", "/etc").unwrap();
    tar_member(&mut b, "lib/passwd", tar::EntryType::Regular, b"x", |_| {});
    let e = from_tar(&b.into_inner().unwrap()[..], Cursor::new(Vec::new())).err().unwrap();
    assert!(e.to_string().contains("not a directory"), "{e}");
}

/// Mounts an image with the host kernel's erofs and compares the tree,
/// xattrs included (`getfattr`). Needs root and loop devices:
/// `cargo test --lib erofs -- --ignored`.
#[test]
#[ignore]
fn mounted_image_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = MapContents::default();
    let mut entries = vec![
        entry("etc", EntryKind::Dir { opaque: true }),
        with(file("bin/ping", &pattern(10_000, 1), &mut c), |e| {
            // A VFS_CAP_REVISION_2 set (cap_net_raw): the kernel checks the format.
            let cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
            e.xattrs = vec![
                Xattr { name: "security.capability".into(), value: cap },
                Xattr { name: "user.note".into(), value: b"hi".to_vec() },
            ]
        }),
        entry("etc/gone", EntryKind::Whiteout),
        entry("bin/sh", EntryKind::Symlink { target: "ping".into() }),
    ];
    for i in 0..600 {
        entries.push(file(&format!("many/{}{i}", "y".repeat(60)), &pattern(i, i as u8), &mut c));
    }
    let img = tmp.path().join("img");
    fs::write(&img, image_of(&mut entries, &mut c)).unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    run(Command::new("mount").args(["-t", "erofs", "-o", "loop,ro"]).arg(&img).arg(&mnt));
    let result = std::panic::catch_unwind(|| {
        let attrs = run(Command::new("getfattr").args(["-d", "-m", "-", "-e", "hex"]).arg(mnt.join("etc")).arg(mnt.join("bin/ping")));
        assert!(attrs.contains("trusted.overlay.opaque=0x79"), "{attrs}");
        assert!(attrs.contains("security.capability=0x0100000200200000000000000000000000000000"), "{attrs}");
        assert!(attrs.contains("user.note=0x6869"), "{attrs}");
        assert_eq!(fs::read(mnt.join("bin/ping")).unwrap(), pattern(10_000, 1));
        assert_eq!(fs::read_link(mnt.join("bin/sh")).unwrap(), Path::new("ping"));
        assert_eq!(fs::read_dir(mnt.join("many")).unwrap().count(), 600);
        for i in 0..600 {
            assert_eq!(fs::read(mnt.join(format!("many/{}{i}", "y".repeat(60)))).unwrap(), pattern(i, i as u8));
        }
        assert!(fs::symlink_metadata(mnt.join("etc/gone")).unwrap().file_type().is_char_device());
    });
    run(Command::new("umount").arg(&mnt));
    result.unwrap();
}
