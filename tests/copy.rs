#![cfg(unix)]
//! COPY and ADD end to end without a VM: a `FROM scratch` build through the
//! kiln binary, exported as an OCI layout and unpacked by umoci (Debian
//! package `umoci`), checked file by file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn kiln(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.env("KILN_DATA_DIR", dir.join("data")).env("TMPDIR", dir.join("tmp")).env_remove("SOURCE_DATE_EPOCH");
    cmd
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn tgz() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(5);
    b.append_data(&mut h, "pkg/bin/run", &b"run!\n"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "pkg/again", "pkg/bin/run").unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn scratch_image_with_copy_and_add_unpacks_as_written() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["data", "tmp", "ctx"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let ctx = dir.path().join("ctx");
    write(&ctx, "app/main.txt", b"main");
    write(&ctx, "app/secret.env", b"KEY=1");
    std::os::unix::fs::symlink("main.txt", ctx.join("app/link")).unwrap();
    write(&ctx, "run.sh", b"#!/bin/sh\n");
    write(&ctx, "conf/nginx/site.conf", b"server {}");
    write(&ctx, "conf/nginx/notes.md", b"no");
    write(&ctx, "pkg.data", &tgz());
    write(&ctx, ".dockerignore", b"**/*.env\n");
    write(
        &ctx,
        "Dockerfile",
        b"FROM scratch\n\
          COPY --chown=10:20 app/ /srv/app/\n\
          COPY --chmod=755 run.sh /usr/local/bin/\n\
          ADD pkg.data /opt/\n\
          COPY <<EOF /etc/motd\nhello\nEOF\n\
          COPY --parents conf/./nginx/*.conf /etc/\n",
    );
    ok(kiln(dir.path()).args(["build", "--progress", "plain", "--platform", "linux/arm64", "-t", "test/copy:1"]).arg(&ctx));
    let layout = dir.path().join("layout");
    ok(kiln(dir.path()).args(["save", "--format", "oci-dir", "-o", layout.to_str().unwrap(), "test/copy:1"]));
    let bundle = dir.path().join("bundle");
    let mut umoci = Command::new("umoci");
    umoci.arg("unpack");
    let root_user = nix::unistd::Uid::effective().is_root();
    if !root_user {
        umoci.arg("--rootless");
    }
    ok(umoci.arg("--image").arg(format!("{}:1", layout.display())).arg(&bundle));
    let rootfs = bundle.join("rootfs");

    assert_eq!(std::fs::read(rootfs.join("srv/app/main.txt")).unwrap(), b"main");
    assert!(!rootfs.join("srv/app/secret.env").exists(), ".dockerignore keeps it out");
    assert_eq!(std::fs::read_link(rootfs.join("srv/app/link")).unwrap(), Path::new("main.txt"));
    if root_user {
        let m = std::fs::metadata(rootfs.join("srv/app/main.txt")).unwrap();
        assert_eq!((m.uid(), m.gid()), (10, 20));
        let m = std::fs::metadata(rootfs.join("srv")).unwrap();
        assert_eq!((m.uid(), m.gid()), (10, 20), "BuildKit chowns the parents it creates");
    }
    let run = std::fs::metadata(rootfs.join("usr/local/bin/run.sh")).unwrap();
    assert_eq!(run.permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(rootfs.join("opt/pkg/bin/run")).unwrap(), b"run!\n");
    let (a, b) = (std::fs::metadata(rootfs.join("opt/pkg/again")).unwrap(), std::fs::metadata(rootfs.join("opt/pkg/bin/run")).unwrap());
    assert_eq!(a.ino(), b.ino(), "the archive's hardlink stays a hardlink");
    assert!(!rootfs.join("opt/pkg.data").exists(), "ADD unpacked the archive");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/motd")).unwrap(), "hello\n");
    assert_eq!(std::fs::read(rootfs.join("etc/nginx/site.conf")).unwrap(), b"server {}");
    assert!(!rootfs.join("etc/nginx/notes.md").exists() && !rootfs.join("etc/conf").exists());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

/// The entries of a tar: path → (kind, content or link target, mode).
fn tar_listing(bytes: &[u8]) -> std::collections::BTreeMap<String, (char, String, u32)> {
    let mut out = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string().trim_end_matches('/').to_string();
        let mode = e.header().mode().unwrap() & 0o7777;
        let (kind, data) = match e.header().entry_type() {
            tar::EntryType::Directory => ('d', String::new()),
            tar::EntryType::Symlink => ('l', e.link_name().unwrap().unwrap().display().to_string()),
            tar::EntryType::Regular => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                ('f', s)
            }
            other => (format!("{other:?}").chars().next().unwrap(), String::new()),
        };
        out.insert(path, (kind, data, mode));
    }
    out
}

#[test]
fn local_and_tar_outputs_write_the_final_file_system_like_buildx() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["data", "tmp", "ctx"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let ctx = dir.path().join("ctx");
    write(&ctx, "app/main.txt", b"main");
    write(&ctx, "app/old.txt", b"old");
    std::os::unix::fs::symlink("/etc/passwd", ctx.join("app/abs-link")).unwrap();
    write(&ctx, "pkg.data", &tgz());
    // A later stage replaces a file and a directory: the export shows the final state only.
    write(
        &ctx,
        "Dockerfile",
        b"FROM scratch AS base\nCOPY app/ /srv/app/\nADD pkg.data /opt/\n\
          FROM base\nCOPY --chmod=700 app/main.txt /srv/app/old.txt\n",
    );
    let build = |extra: &[&str]| {
        let mut cmd = kiln(dir.path());
        cmd.args(["build", "--progress", "plain", "--platform", "linux/arm64"]).args(extra).arg(&ctx);
        ok(&mut cmd)
    };

    // type=tar to a file, and `-o -` to stdout: the same tar.
    let tar_path = dir.path().join("fs.tar");
    build(&["-o", &format!("type=tar,dest={}", tar_path.display())]);
    let listing = tar_listing(&std::fs::read(&tar_path).unwrap());
    // GNU tar reads it too, every member with it.
    let gnu = ok(Command::new("tar").arg("-tf").arg(&tar_path));
    let mut gnu: Vec<&str> = gnu.lines().map(|l| l.trim_end_matches('/')).filter(|l| !l.is_empty()).collect();
    gnu.sort_unstable();
    assert_eq!(gnu, listing.keys().map(|k| k.trim_end_matches('/')).collect::<Vec<_>>(), "tar -tf lists what kiln wrote");
    assert_eq!(listing["srv/app/main.txt"], ('f', "main".into(), 0o644));
    assert_eq!(listing["srv/app/old.txt"], ('f', "main".into(), 0o700), "the later COPY wins");
    assert_eq!(listing["srv/app/abs-link"].1, "/etc/passwd", "symlinks are kept, not followed");
    assert_eq!(listing["opt/pkg/bin/run"].1, "run!\n");
    assert!(!listing.keys().any(|k| k.contains(".wh.")), "no whiteouts or opaque markers: {listing:?}");
    let mut cmd = kiln(dir.path());
    cmd.args(["build", "-q", "--platform", "linux/arm64", "-o", "-"]).arg(&ctx);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tar_listing(&out.stdout), listing, "-o - streams the same tar to stdout");

    // type=local (and the short form `-o DIR`), over a directory with old content.
    let local = dir.path().join("out");
    write(&local, "srv/app/old.txt/stale", b"a directory where the image has a file");
    write(&local, "keep.txt", b"the user's own file");
    build(&["-o", local.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(local.join("srv/app/main.txt")).unwrap(), "main");
    let old = std::fs::metadata(local.join("srv/app/old.txt")).unwrap();
    assert!(old.is_file() && old.permissions().mode() & 0o7777 == 0o700);
    assert_eq!(std::fs::read_link(local.join("srv/app/abs-link")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(std::fs::read(local.join("opt/pkg/again")).unwrap(), b"run!\n");
    assert_eq!(std::fs::read_to_string(local.join("keep.txt")).unwrap(), "the user's own file");

    // Several platforms: one folder each, named as buildx names them.
    let multi = dir.path().join("multi");
    build(&["--platform", "linux/amd64", "-o", &format!("type=local,dest={}", multi.display())]);
    assert_eq!(std::fs::read_to_string(multi.join("linux_arm64/srv/app/main.txt")).unwrap(), "main");
    assert_eq!(std::fs::read_to_string(multi.join("linux_amd64/srv/app/main.txt")).unwrap(), "main");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

/// A build with SOURCE_DATE_EPOCH is reproducible even on a store whose
/// cache holds the same steps from a build without it (their layers carry
/// other mtimes, so they must not be reused), and so is one with another
/// compression.
#[test]
fn the_cache_never_hands_a_reproducible_build_layers_made_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    write(&ctx, "Dockerfile", b"FROM scratch\nCOPY hello.txt /hello.txt\nWORKDIR /app\n");
    write(&ctx, "hello.txt", b"hello\n");
    let digest = |store: &str, extra: &[&str]| {
        let meta = dir.path().join(format!("{store}.json"));
        let mut cmd = kiln(dir.path());
        cmd.env("KILN_DATA_DIR", dir.path().join(store)).args(["build", "-q", "--platform", "linux/arm64", "--metadata-file"]);
        ok(cmd.arg(&meta).args(extra).arg(&ctx));
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        meta["containerimage.digest"].as_str().unwrap().to_string()
    };
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let fresh = digest("fresh", &epoch);
    digest("used", &[]);
    assert_eq!(digest("used", &epoch), fresh, "the epoch build reused layers of the build without it");
    let zstd = digest("used", &["--compression", "zstd"]);
    assert_eq!(zstd, digest("fresh-zstd", &["--compression", "zstd"]), "the zstd build reused gzip layers");
}

/// `RUN --network=host` and `--security=insecure` need buildx's entitlement
/// flag; without it the build stops at the step's line before any VM boots.
#[test]
fn privileged_run_options_need_the_allow_entitlement() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    for (flag, entitlement) in [("--network=host", "network.host"), ("--security=insecure", "security.insecure")] {
        write(&ctx, "Dockerfile", format!("FROM scratch\nRUN {flag} true\n").as_bytes());
        let out = kiln(dir.path()).args(["build", "--platform", "linux/arm64"]).arg(&ctx).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("Dockerfile:2:1") && err.contains(&format!("--allow {entitlement}")), "{err}");
    }
    let out = kiln(dir.path()).args(["build", "--allow", "root.everything"]).arg(&ctx).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("network.host"));
}
