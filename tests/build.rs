#![cfg(unix)]
//! `kiln build` end to end, as a user runs it: real Dockerfiles built for
//! linux/arm64 under TCG from the Debian base image that
//! scripts/make-debian-base.sh makes (and a busybox image for the quick
//! failure cases), each result checked on the host with umoci and skopeo,
//! never with kiln itself.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::build_env::Env;
use support::processes::{alive, children_of, wait_gone};
use support::rootfs_links::with_links;

const BUSYBOX: &str = "kiln.local/busybox:test";

/// The build tests' `Env`, with the platform they build for.
trait BuildExt {
    fn build(&self, extra: &[&str]) -> Output;
    /// A successful build with SOURCE_DATE_EPOCH set and `vars` in its
    /// environment: the image digest (from --metadata-file) and the log.
    fn build_reproducibly(&self, vars: &[(&str, &str)], extra: &[&str]) -> (String, String);
}

impl BuildExt for Env {
    fn build(&self, extra: &[&str]) -> Output {
        let mut cmd = self.kiln();
        cmd.args(["build", "--progress", "plain", "--platform", "linux/arm64"]).args(extra).arg(self.ctx());
        cmd.output().unwrap()
    }

    fn build_reproducibly(&self, vars: &[(&str, &str)], extra: &[&str]) -> (String, String) {
        let mut cmd = self.kiln();
        cmd.env("SOURCE_DATE_EPOCH", "1700000000").envs(vars.iter().copied());
        cmd.args(["build", "--progress", "plain", "--platform", "linux/arm64", "--metadata-file"])
            .arg(self.path("meta.json"))
            .args(extra)
            .arg(self.ctx());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(self.path("meta.json")).unwrap()).unwrap();
        (meta["containerimage.digest"].as_str().unwrap().to_string(), stderr(&out))
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `umoci unpack` of `image` exported from the env's store; returns the rootfs.
fn unpack_with_umoci(env: &Env, image: &str, tag: &str) -> PathBuf {
    let layout = env.path("layout");
    let _ = std::fs::remove_dir_all(&layout);
    env.ok(&["save", "--format", "oci-dir", "-o", layout.to_str().unwrap(), image]);
    let bundle = env.path("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    // As root (CI), umoci restores owners, xattrs and device nodes, which is what these tests check.
    if !nix::unistd::Uid::effective().is_root() {
        cmd.arg("--rootless");
    }
    let out = cmd.arg("--image").arg(format!("{}:{tag}", layout.display())).arg(&bundle).output().expect("umoci is installed");
    assert!(out.status.success(), "umoci unpack failed: {}", String::from_utf8_lossy(&out.stderr));
    bundle.join("rootfs")
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// The capability is set the way `setcap cap_net_bind_service+ep` sets it
/// (a v2 `security.capability` xattr; setxattr is syscall 5 on arm64),
/// because Debian's minbase has perl but not libcap2-bin.
#[test]
fn debian_arm64_build_keeps_every_kind_of_change() {
    let env = Env::new();
    env.load_debian("arm64");
    env.write("app.txt", "from the context\n");
    env.write(
        "Dockerfile",
        r#"ARG BASE=kiln.local/debian:bookworm-arm64
FROM ${BASE}
RUN useradd -m -u 1234 app \
 && mkdir -p /data/keep /data/gone /opaque \
 && echo one > /data/keep/changed && echo x > /data/gone/f && echo del > /data/del && touch /opaque/old
RUN echo two > /data/keep/changed && rm /data/del && rm -rf /data/gone /opaque && mkdir /opaque && touch /opaque/new \
 && cp /bin/true /usr/local/bin/capped \
 && perl -e 'my ($p, $n, $v) = ("/usr/local/bin/capped", "security.capability", pack("V5", 0x02000001, 0x400, 0, 0, 0)); syscall(5, $p, $n, $v, 20, 0) == 0 or die "setxattr: $!"' \
 && cp /bin/true /usr/local/bin/suid && chmod 4755 /usr/local/bin/suid \
 && echo h > /h1 && ln /h1 /h2 && ln -s /h1 /sym && mknod /nulldev c 1 3 \
 && chown app:app /data/keep/changed && uname -m > /arch && echo synced > /synced && sync /synced
COPY app.txt /srv/
USER app
WORKDIR /home/app/work
RUN touch by-app && test "$(id -u)" = 1234 && echo "pid $$" > pid
ARG CHECK=no
RUN if [ "$CHECK" = yes ]; then \
    test "$(cat /data/keep/changed)" = two && test ! -e /data/del && test ! -e /data/gone \
 && test -e /opaque/new && test ! -e /opaque/old && test "$(stat -c %i /h1)" = "$(stat -c %i /h2)" \
 && test "$(readlink /sym)" = /h1 && test -c /nulldev && test "$(stat -c %a /usr/local/bin/suid)" = 4755 \
 && test "$(stat -c %u /data/keep/changed)" = 1234 && test "$(ls -a /data | head -n 2 | tr '\n' ' ')" = '. .. ' \
 && perl -e 'my ($p, $n, $v) = ("/usr/local/bin/capped", "security.capability", "\0" x 64); syscall(8, $p, $n, $v, 64) == 20 or die "getxattr: $!"' \
 && grep -q '^overlay / overlay .*,volatile' /proc/mounts \
 && echo every-layer-as-built; fi
"#,
    );
    let out = env.build(&["-t", "test/fs:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Only the last RUN misses the cache: the VM gets every layer below it
    // (the base, three RUNs, COPY) as a disk image, unpacks none, and the
    // command sees exactly what the layers hold.
    let out = env.build(&["--build-arg", "CHECK=yes"]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("every-layer-as-built"), "{log}");
    assert!(log.contains("mounted from disk images, 0 unpacked"), "{log}");
    assert!(!log.contains(" 0 mounted from disk images"), "{log}");
    let root = unpack_with_umoci(&env, "test/fs:1", "1");

    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
    assert_eq!(read("arch"), "aarch64\n", "RUN ran on an arm64 guest");
    assert_eq!(read("data/keep/changed"), "two\n");
    assert!(!root.join("data/del").exists(), "a deleted file is whited out");
    assert!(!root.join("data/gone").exists(), "a deleted directory is whited out");
    assert!(root.join("opaque/new").exists());
    assert!(!root.join("opaque/old").exists(), "a recreated directory hides the old contents (opaque)");
    assert_eq!(meta("usr/local/bin/suid").permissions().mode() & 0o7777, 0o4755);
    assert_eq!(meta("h1").ino(), meta("h2").ino(), "hardlinks stay hardlinks");
    assert_eq!(std::fs::read_link(root.join("sym")).unwrap(), Path::new("/h1"));
    assert_eq!(read("srv/app.txt"), "from the context\n");
    // fsync inside a step's (volatile) overlay is a no-op; the file is in the layer all the same.
    assert_eq!(read("synced"), "synced\n");
    assert_eq!(read("home/app/work/pid"), "pid 1\n", "RUN is PID 1 of its own namespace");
    if nix::unistd::Uid::effective().is_root() {
        assert_eq!(meta("data/keep/changed").uid(), 1234, "owner from useradd");
        assert_eq!(meta("home/app/work/by-app").uid(), 1234, "RUN ran as USER app");
        assert_eq!(meta("home/app/work").uid(), 1234, "WORKDIR is created for the USER");
        let dev = meta("nulldev");
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), libc::makedev(1, 3));
        let cap = xattr(&root.join("usr/local/bin/capped"), "security.capability").expect("security.capability is kept");
        assert_eq!(cap, [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "cap_net_bind_service+ep");
    }

    let inspect = Command::new("skopeo")
        .args(["inspect", "--override-arch", "arm64"])
        .arg(format!("oci:{}:1", env.path("layout").display()))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Architecture"], "arm64");
    assert_eq!(info["Os"], "linux");
    env.assert_tmp_empty();
}

#[test]
fn cache_and_reproducibility() {
    let env = Env::new();
    env.import_busybox("arm64", BUSYBOX);
    env.write("a.txt", "a\n");
    env.write("b.txt", "b\n");
    env.write(
        "Dockerfile",
        &format!("FROM {BUSYBOX}\nCOPY a.txt /a.txt\nRUN cat /a.txt /a.txt > /aa.txt && mkdir /made\nCOPY b.txt /b.txt\n"),
    );
    let build = |extra: &[&str]| env.build_reproducibly(&[], extra);
    let (first, log) = build(&["-t", "test/cache:1"]);
    assert!(log.contains("booting"), "the first build runs RUN in a VM:\n{log}");

    let (second, log) = build(&["-t", "test/cache:2"]);
    assert_eq!(second, first);
    assert!(!log.contains("booting"), "a fully cached build boots no VM:\n{log}");
    assert_eq!(log.matches("CACHED").count(), 3, "{log}");
    assert!(log.contains("no VM booted"), "{log}");

    let (third, _) = build(&["--no-cache"]);
    assert_eq!(third, first, "SOURCE_DATE_EPOCH makes a rebuild from scratch byte-identical");

    // Changing the file only the last COPY reads rebuilds only that step.
    env.write("b.txt", "changed\n");
    let (fourth, log) = build(&[]);
    assert_ne!(fourth, first);
    assert_eq!(log.matches("CACHED").count(), 2, "{log}");
    assert!(!log.contains("booting"), "{log}");
    env.assert_tmp_empty();
}

/// The EROFS images in the env's layer image cache (one writer format).
fn cached_layer_images(env: &Env) -> Vec<PathBuf> {
    let root = env.path("cache/layer-images");
    let formats: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(formats.len(), 1, "one writer format: {formats:?}");
    std::fs::read_dir(&formats[0]).unwrap().map(|e| e.unwrap().path()).collect()
}

/// Zeroes the superblock of each image (they are sparse 64 GiB files).
fn damage_superblocks(images: &[PathBuf]) {
    for image in images {
        let file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 8192], 0).unwrap();
    }
}

/// Layers reach the guest as EROFS disk images made on the host; when the
/// guest cannot mount one (here: a damaged cached image) or disks are
/// switched off, the layer is unpacked in the guest instead, with the same
/// image as the result, and the damaged image is made again next time.
#[test]
fn layer_disks_fall_back_to_unpacking_with_the_same_image() {
    let env = Env::with_private_cache();
    env.import_busybox("arm64", BUSYBOX);
    env.write("a.txt", "a\n");
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nCOPY a.txt /a.txt\nRUN rm /bin/ls && cat /a.txt /a.txt > /aa.txt\n"));
    let build = |disks: &str| env.build_reproducibly(&[("KILN_LAYER_DISKS", disks)], &["--no-cache"]);
    let images = || cached_layer_images(&env);

    let (with_disks, log) = build("on");
    assert!(log.contains("making disk images of 2 layers"), "{log}");
    assert!(log.contains("layers: 2 mounted from disk images, 0 unpacked"), "{log}");
    assert_eq!(images().len(), 2);

    let (unpacked, log) = build("off");
    assert!(log.contains("layers: 0 mounted from disk images, 2 unpacked"), "{log}");
    assert_eq!(unpacked, with_disks, "both ways give the same image");

    damage_superblocks(&images());
    let (fallback, log) = build("on");
    assert!(log.contains("layers: 0 mounted from disk images, 2 unpacked"), "{log}");
    assert_eq!(fallback, with_disks);
    assert!(images().is_empty(), "images the guest could not mount are dropped");

    let (again, log) = build("on");
    assert!(log.contains("layers: 2 mounted from disk images, 0 unpacked"), "{log}");
    assert_eq!(again, with_disks);
    env.assert_tmp_empty();
}

/// Layers that reach a running VM after it booted (here: the last stage's
/// own COPY layers; in real builds also a later stage's base) are written
/// into the VM's spare layer slots and mounted, not unpacked under
/// emulation, with the same image as unpacking gives. Damaged images fall
/// back to unpacking and are made again.
#[test]
fn layers_that_come_after_the_boot_are_mounted_through_spare_slots() {
    let env = Env::with_private_cache();
    env.import_busybox("arm64", BUSYBOX);
    env.write("a.txt", "a\n");
    env.write("b.txt", "b\n");
    env.write(
        "Dockerfile",
        &format!(
            "FROM {BUSYBOX} AS first\nCOPY a.txt /a.txt\nRUN cat /a.txt > /first.txt\n\
             FROM {BUSYBOX}\nCOPY b.txt /b.txt\nCOPY --from=first /first.txt /copied.txt\nRUN cat /b.txt /copied.txt > /both.txt\n"
        ),
    );
    let build = |disks: &str| env.build_reproducibly(&[("KILN_LAYER_DISKS", disks)], &["--no-cache"]);
    // Both RUNs report two layers: busybox and a.txt's at boot, then the
    // two COPY layers of the last stage.
    let count = |log: &str, what: &str| log.matches(&format!("layers: {what}")).count();

    let (with_disks, log) = build("on");
    assert_eq!(count(&log, "2 mounted from disk images, 0 unpacked"), 2, "{log}");
    let (unpacked, log) = build("off");
    assert_eq!(count(&log, "0 mounted from disk images, 2 unpacked"), 2, "{log}");
    assert_eq!(unpacked, with_disks, "both ways give the same image");

    let images = cached_layer_images(&env);
    assert_eq!(images.len(), 4, "{images:?}");
    damage_superblocks(&images);
    // The boot disks fail to mount, and after that the VM uses no slots.
    let (fallback, log) = build("on");
    assert_eq!(count(&log, "0 mounted from disk images, 2 unpacked"), 2, "{log}");
    assert_eq!(fallback, with_disks);
    // The boot disks are made again; the late images are found damaged
    // when their turn comes, dropped and unpacked; the next build makes them.
    let (repaired, log) = build("on");
    assert_eq!(count(&log, "2 mounted from disk images, 0 unpacked"), 1, "{log}");
    assert_eq!(count(&log, "0 mounted from disk images, 2 unpacked"), 1, "{log}");
    assert_eq!(repaired, with_disks);
    let (again, log) = build("on");
    assert_eq!(count(&log, "2 mounted from disk images, 0 unpacked"), 2, "{log}");
    assert_eq!(again, with_disks);
    env.assert_tmp_empty();
}

/// The first VM saves a boot snapshot and later VMs restore it. A
/// restored guest runs with the host's clock, not the snapshot's, and with
/// randomness of its own (the host's hello reseeds it; the kernel's early
/// reseeding from interrupt timing diverges as well); a damaged snapshot
/// costs a full boot and is saved again; `KILN_BOOT_SNAPSHOT=off` boots
/// from scratch.
#[test]
fn boot_snapshots_restore_with_the_hosts_clock_and_fresh_randomness() {
    let env = Env::with_private_cache();
    env.import_busybox("arm64", BUSYBOX);
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo \"clock $(date +%s)\" && echo \"random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')\"\n"));
    let build = |snapshots: &str| {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let (_, log) = env.build_reproducibly(&[("KILN_BOOT_SNAPSHOT", snapshots)], &["--no-cache"]);
        let value = |key: &str| -> String {
            let at = log.find(&format!(" {key} ")).unwrap_or_else(|| panic!("no {key} in:\n{log}")) + key.len() + 2;
            log[at..].split_whitespace().next().unwrap().to_string()
        };
        let clock: u64 = value("clock").parse().unwrap();
        assert!(clock + 2 >= before && clock <= before + 120, "guest clock {clock}, host {before}:\n{log}");
        value("random")
    };
    let snapshots = env.path("cache/vm-snapshots");
    let states = || -> Vec<(PathBuf, u64)> {
        let Ok(dirs) = std::fs::read_dir(&snapshots) else { return Vec::new() };
        dirs.map(|d| d.unwrap().path().join("state"))
            .filter(|s| s.is_file())
            .map(|s| {
                let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&s).unwrap());
                (s, ino)
            })
            .collect()
    };

    build("off");
    assert!(states().is_empty(), "no snapshot without snapshots");
    let first = build("on");
    let saved = states();
    assert_eq!(saved.len(), 1, "the first VM saves one snapshot");
    let second = build("on");
    // Long enough after the save for a guest still on the snapshot's clock to show it.
    std::thread::sleep(Duration::from_secs(5));
    let third = build("on");
    assert_eq!(states(), saved, "later VMs restore it (a failed restore would remove it)");
    assert!(first != second && second != third && first != third, "each VM has its own randomness: {first} {second} {third}");

    std::fs::write(&saved[0].0, b"damaged").unwrap();
    build("on");
    let again = states();
    assert_eq!(again.len(), 1);
    assert_ne!(again, saved, "a damaged snapshot is replaced");
    assert!(std::fs::metadata(&again[0].0).unwrap().len() > 1 << 20);
    env.assert_tmp_empty();
}

/// Every platform but arm64 and amd64 (which the other tests build): a RUN
/// in its guest, checked by umoci (diff_ids) and skopeo (platform).
/// linux/arm/v6 (Debian's armel busybox) runs in the armv7 guest, linux/386
/// (Debian's i386 busybox) in the amd64 guest under the 32-bit personality,
/// so `uname -m` says `i686` as on a 32-bit machine.
#[test]
fn every_platform_builds_with_a_run_in_its_guest() {
    let env = Env::new();
    for (platform, fixture, machine, arch, variant) in [
        ("linux/arm/v7", "armv7", "armv7l", "arm", Some("v7")),
        ("linux/arm/v6", "armv6", "armv7l", "arm", Some("v6")),
        ("linux/386", "386", "i686", "386", None),
        ("linux/riscv64", "riscv64", "riscv64", "riscv64", None),
        ("linux/ppc64le", "ppc64le", "ppc64le", "ppc64le", None),
        ("linux/s390x", "s390x", "s390x", "s390x", None),
    ] {
        let tar = support::build_env::fixture(&format!("busybox-{fixture}.tar"), &format!("run scripts/make-busybox-rootfs.sh {fixture}"));
        let base = format!("kiln.local/busybox:{fixture}");
        env.ok(&["import", "--platform", platform, tar.to_str().unwrap(), &base]);
        // A megabyte of output too: over vhost-user vsock, riscv64 guests
        // stalled on such streams (they talk over virtio-serial now).
        env.write("Dockerfile", &format!("FROM {base}\nRUN uname -m > /arch && yes kiln | head -n 200000 && echo streamed-all\n"));
        let tag = format!("test/{fixture}:1");
        let out = env.kiln().args(["build", "--progress", "plain", "--platform", platform, "-t", &tag]).arg(env.ctx()).output().unwrap();
        assert!(out.status.success(), "{platform}: {}", stderr(&out));
        assert!(stderr(&out).contains("streamed-all"), "{platform}: the output stopped short");
        let root = unpack_with_umoci(&env, &tag, "1");
        assert_eq!(std::fs::read_to_string(root.join("arch")).unwrap(), format!("{machine}\n"), "{platform}");
        let mut inspect = Command::new("skopeo");
        inspect.args(["inspect", "--override-arch", arch]);
        if let Some(v) = variant {
            inspect.args(["--override-variant", v]);
        }
        let inspect = inspect.arg("--config").arg(format!("oci:{}:1", env.path("layout").display())).output().unwrap();
        let config: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!((config["architecture"].as_str(), config["variant"].as_str()), (Some(arch), variant), "{platform}");
    }
    env.assert_tmp_empty();
}

/// The paths in the topmost layer of `image` (from an OCI layout export).
fn top_layer_paths(env: &Env, image: &str) -> Vec<String> {
    let layout = env.path("top-layer");
    let _ = std::fs::remove_dir_all(&layout);
    env.ok(&["save", "--format", "oci-dir", "-o", layout.to_str().unwrap(), image]);
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json = |path: PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(blob(&layer)).unwrap());
    let mut paths: Vec<String> =
        tar::Archive::new(gz).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    paths.sort();
    std::fs::remove_dir_all(&layout).unwrap();
    paths
}

/// A base whose mount points are symlinks (debootstrap's `proc -> /proc` in
/// containers, relative self-links, links elsewhere): RUN and `kiln run` get
/// working mounts, and the RUN's layer holds only what the command wrote.
#[test]
fn run_on_a_base_with_symlinked_mount_points() {
    let env = Env::new();
    let tar = support::build_env::fixture("busybox-arm64.tar", "run scripts/make-busybox-rootfs.sh arm64");
    let linked = env.path("links.tar");
    with_links(
        &tar,
        &linked,
        &[
            ("proc", "../../proc"),
            ("sys", "/sys"),
            ("dev", "dev"),
            ("tmp", "/tmp"),
            ("etc/hosts", "hosts"),
            ("etc/resolv.conf", "/run/resolv.conf"),
        ],
    );
    env.ok(&["import", "--platform", "linux/arm64", linked.to_str().unwrap(), "kiln.local/links:1"]);
    env.write(
        "Dockerfile",
        "FROM kiln.local/links:1\n\
         RUN read -r pid rest < /proc/self/stat && [ -d /proc/1 ] && [ -e /sys/kernel ] && [ -c /dev/null ] \\\n\
          && grep -q localhost /etc/hosts && grep -q nameserver /etc/resolv.conf && echo \"$pid\" > /out\n",
    );
    let out = env.build(&["-t", "test/links:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(top_layer_paths(&env, "test/links:1"), ["out"], "the RUN's layer holds only its own change");
    let root = unpack_with_umoci(&env, "test/links:1", "1");
    assert_eq!(std::fs::read_link(root.join("proc")).unwrap(), Path::new("../../proc"), "the image's links stay");
    assert_eq!(std::fs::read_link(root.join("etc/hosts")).unwrap(), Path::new("hosts"));
    assert!(!root.join("run/resolv.conf").exists(), "no mount point stub is left in the image");

    let out = env.ok(&["run", "test/links:1", "sh", "-c", "cat /proc/1/comm; ls /sys/kernel >/dev/null && echo sys"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sh\nsys\n");
    env.assert_tmp_empty();
}

#[test]
fn failing_run_reports_the_step_and_tags_nothing() {
    let env = Env::new();
    env.import_busybox("arm64", BUSYBOX);
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo preparing && echo boom >&2 && exit 3\n"));
    let out = env.build(&["-t", "test/fail:1"]);
    assert_eq!(out.status.code(), Some(1), "a failed build exits 1, as buildx's does");
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:2"), "names the file and line: {err}");
    // buildx's plain output: the step's ERROR line, then its last output lines.
    let process = r#"process "/bin/sh -c echo preparing && echo boom >&2 && exit 3" did not complete successfully: exit code: 3"#;
    let error_line = format!("#{step} ERROR: {process}\n", step = err.split(" [2/2] RUN").next().unwrap().rsplit('#').next().unwrap());
    let block = err.split(&error_line).nth(1).unwrap_or_else(|| panic!("no {error_line:?} in:\n{err}"));
    let block: Vec<&str> = block.lines().collect();
    assert_eq!(block[0..2], ["------", " > [2/2] RUN echo preparing && echo boom >&2 && exit 3:"], "{err}");
    let end = block.iter().skip(1).position(|l| *l == "------").expect("the block ends") + 1;
    // stdout and stderr arrive in either order.
    for line in [" preparing", " boom"] {
        assert!(block[2..end].iter().any(|l| l.ends_with(line)), "{line} in the block: {err}");
    }
    assert!(err.contains(&format!("error: {}", env.ctx().join("Dockerfile").display())) && err.contains(process), "{err}");
    assert!(!env.tags().contains("test/fail"), "nothing is tagged");
    env.assert_tmp_empty();
}

/// Starts `kiln build -t TAG` of a RUN that sleeps, and returns once the
/// RUN runs: the child and the rest of its log.
fn start_hanging_build(env: &Env, tag: &str) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStderr>>) {
    env.import_busybox("arm64", BUSYBOX);
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo started && sleep 600\n"));
    let mut child = env
        .kiln()
        .args(["build", "--progress", "plain", "--platform", "linux/arm64", "-t", tag])
        .arg(env.ctx())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !lines.next().expect("kiln ended before the RUN started").unwrap().ends_with(" started") {
        assert!(Instant::now() < deadline, "the RUN never started");
    }
    (child, lines)
}

#[test]
fn ctrl_c_during_run_leaves_no_vm_no_tag_and_the_next_build_works() {
    let env = Env::new();
    let (mut child, lines) = start_hanging_build(&env, "test/int:1");
    let qemu: Vec<u32> = children_of(child.id());
    assert!(!qemu.is_empty(), "qemu runs as kiln's child");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(130), "128 + SIGINT, as docker exits");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    assert!(!qemu.iter().any(|&pid| alive(pid)), "processes {qemu:?} outlived kiln");
    assert!(!env.tags().contains("test/int"));
    env.assert_tmp_empty();

    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo fine > /ok\n"));
    let out = env.build(&["-t", "test/int:2"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn sigkill_during_run_takes_the_vm_along_and_the_next_build_cleans_up() {
    let env = Env::new();
    let (mut child, _lines) = start_hanging_build(&env, "test/killed:1");
    let helpers = children_of(child.id());
    assert!(!helpers.is_empty(), "qemu runs as kiln's child");
    child.kill().unwrap(); // SIGKILL: no handler, no cleanup in kiln
    child.wait().unwrap();
    wait_gone(&helpers, Duration::from_secs(10));
    assert!(!env.tags().contains("test/killed"));
    // The next build works and removes the dead build's run directory.
    env.write("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo fine > /ok\n"));
    let out = env.build(&["-t", "test/killed:2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.assert_tmp_empty();
}

#[test]
fn signals_stop_a_stalled_pull_and_a_stalled_add_download() {
    // A registry and a web server that accept connections and never answer.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || listener.incoming().collect::<Vec<_>>());
    let cases = [
        ("-INT", 130, format!("FROM {addr}/stalled/image:1\nRUN true\n")),
        ("-TERM", 143, format!("FROM scratch\nADD http://{addr}/file /file\n")),
    ];
    for (signal, code, dockerfile) in cases {
        let env = Env::new();
        env.write("Dockerfile", &dockerfile);
        let mut child = env
            .kiln()
            .args(["build", "--progress", "plain", "--platform", "linux/arm64", "-t", "test/stalled:1"])
            .arg(env.ctx())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        assert!(child.try_wait().unwrap().is_none(), "{signal}: the build waits on the silent server");
        Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        let sent = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{signal}: kiln still runs 10 s after the signal");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {err}");
        assert!(err.contains("interrupted"), "{signal}: {err}");
        assert!(!env.tags().contains("test/stalled"), "{signal}: nothing is tagged");
        env.assert_tmp_empty();
    }
}

/// Linux file names are bytes. One that is not UTF-8 (a Latin-1 `é`,
/// 0xe9) passes through COPY, ADD of an archive, a RUN's snapshot, the next
/// build's layers (mounted as disks or unpacked) and a local export
/// unchanged, as with Docker.
#[test]
fn names_that_are_not_utf8_pass_through_every_path() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    env.import_busybox("arm64", BUSYBOX);
    let latin1 = |prefix: &str| std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&[prefix.as_bytes(), b"\xe9"].concat()));
    std::fs::write(env.ctx().join(latin1("ctx")), "x").unwrap();
    std::os::unix::fs::symlink(latin1("ctx"), env.ctx().join("link")).unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o644);
    archive.append_data(&mut h, std::path::Path::new(&latin1("arch")), &b"a"[..]).unwrap();
    std::fs::write(env.ctx().join("a.tar"), archive.into_inner().unwrap()).unwrap();
    env.write(
        "Dockerfile",
        &format!("FROM {BUSYBOX}\nCOPY . /c/\nADD a.tar /a/\nRUN printf r > \"/run$(printf '\\351')\"\n"),
    );
    let out = env.build(&["-t", "kiln.local/latin1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let check = "e=$(printf '\\351'); test -f \"/c/ctx$e\" && test \"$(readlink /c/link)\" = \"ctx$e\" && test -f \"/a/arch$e\" && test -f \"/run$e\" && echo all-there";
    env.write("Dockerfile", &format!("FROM kiln.local/latin1\nRUN {check}\n"));
    for disks in ["on", "off"] {
        let mut cmd = env.kiln();
        cmd.env("KILN_LAYER_DISKS", disks).args(["build", "--progress", "plain", "--no-cache", "--platform", "linux/arm64"]);
        let dest = format!("type=local,dest={}", env.path(&format!("out-{disks}")).display());
        let out = cmd.args(["-o", &dest]).arg(env.ctx()).output().unwrap();
        assert!(out.status.success() && stderr(&out).contains("all-there"), "layer disks {disks}: {}", stderr(&out));
    }
    let out = env.path("out-on");
    for name in [Path::new("c").join(latin1("ctx")), Path::new("a").join(latin1("arch")), PathBuf::from(latin1("run"))] {
        assert!(out.join(&name).is_file(), "{} is not in the export", name.display());
    }
    assert_eq!(std::fs::read_link(out.join("c/link")).unwrap().as_os_str(), latin1("ctx"));
    env.assert_tmp_empty();
}

#[test]
fn copy_errors_name_the_file_line_and_source() {
    let env = Env::new();
    std::fs::write(env.path("outside.txt"), "secret").unwrap();
    for (source, expect) in [("../outside.txt", "outside the build context"), ("missing.txt", "missing.txt")] {
        env.write("Dockerfile", &format!("FROM scratch\nCOPY {source} /x\n"));
        let out = env.build(&["-t", "test/copy:1"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("Dockerfile:2"), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!err.contains("secret"));
    }
    assert!(!env.tags().contains("test/copy"));
    env.assert_tmp_empty();
}

#[test]
fn metadata_instructions_shape_the_config_like_docker() {
    let env = Env::new();
    env.write(
        "Dockerfile",
        "FROM scratch\nENV A=1 B=\"two words\"\nLABEL org.example=x\nEXPOSE 80 53/udp\nCMD [\"/app\"]\nENTRYPOINT [\"/bin/sh\",\"-c\"]\nSTOPSIGNAL SIGTERM\nVOLUME /data\nUSER 1000:1000\n",
    );
    let out = env.build(&["-t", "test/meta:1", "--label", "extra=y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inspect = env.ok(&["inspect", "test/meta:1"]);
    let config: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let c = &config["config"];
    assert!(c["Env"].as_array().unwrap().iter().any(|e| e == "B=two words"));
    assert_eq!(c["Labels"]["org.example"], "x");
    assert_eq!(c["Labels"]["extra"], "y");
    assert!(c["ExposedPorts"].get("53/udp").is_some());
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["/app"]), "ENTRYPOINT keeps a CMD set in the same stage, as in Docker");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["history"].as_array().unwrap().len(), 8);
    assert!(stderr(&out).contains("built linux/arm64 in "), "{}", stderr(&out));

    // A stage's own --platform decides the image's platform, and the summary names it.
    env.write("Dockerfile", "FROM --platform=linux/arm/v7 scratch\nENV A=1\n");
    let out = env.build(&["-t", "test/meta:2"]);
    assert!(stderr(&out).contains("built linux/arm/v7 in "), "{}", stderr(&out));
    let config: serde_json::Value = serde_json::from_slice(&env.ok(&["inspect", "test/meta:2"]).stdout).unwrap();
    assert_eq!((&config["architecture"], &config["variant"]), (&serde_json::json!("arm"), &serde_json::json!("v7")));
}
