//! VM integration tests: real guests under QEMU (arm64 and arm/v7 under TCG,
//! amd64 with KVM where usable), over both transports.
//!
//! Needs what scripts/test.sh prepares: QEMU, vhost-device-vsock, the guest
//! agents embedded in kiln (scripts/build-agents.sh), network access to the
//! Debian mirror or a warm kernel cache, and busybox root file systems in
//! .cache/fixtures (scripts/make-busybox-rootfs.sh).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kiln::platform::Platform;
use kiln::vm::transport::TransportChoice;
use kiln::vm::{Vm, VmConfig};
use kiln_protocol::{stream, EntryKind, ExecRequest, ExitStatus, MountSpec, RootSpec, Xattr};
use sha2::{Digest, Sha256};

mod support;
use support::processes::{children_of, wait_gone};

use support::rootfs_links;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rootfs(arch: &str) -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_FIXTURES").map(PathBuf::from).unwrap_or_else(|| repo().join(".cache/fixtures"));
    let path = dir.join(format!("busybox-{arch}.tar"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/make-busybox-rootfs.sh {arch} {} (scripts/test.sh does)",
        path.display(),
        path.display()
    );
    path
}

/// A private TMPDIR so each test can check that nothing was left behind.
struct Tmp(tempfile::TempDir);

impl Tmp {
    fn new() -> Tmp {
        Tmp(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn assert_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
    }
}

fn kiln(tmp: &Tmp) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.env("TMPDIR", tmp.path());
    cmd
}

fn boot(platform: &str, transport: TransportChoice) -> Vm {
    let platform: Platform = platform.parse().unwrap();
    let mut config = VmConfig::new(platform.clone());
    config.transport = transport;
    config.memory_mib = 1024;
    let files = kiln::vm::boot_files(&platform, None).expect("kernel and initramfs");
    Vm::boot(&config, &files, &AtomicBool::new(false)).expect("boot")
}

fn run(vm: &mut Vm, script: &str, stdin: Option<Vec<u8>>, timeout_ms: Option<u64>) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let req = ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        root: Some(RootSpec::Dir { path: "rootfs".into() }),
        timeout_ms,
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let stdin = stdin.map(|b| Box::new(std::io::Cursor::new(b)) as Box<dyn Read + Send>);
    let status = vm
        .exec(req, stdin, &mut |s, b| if s == stream::STDOUT { out.extend_from_slice(b) } else { err.extend_from_slice(b) }, &AtomicBool::new(false))
        .expect("exec");
    (status, out, err)
}

/// The behaviour every transport must show, in one VM.
fn exec_contract(transport: TransportChoice) {
    let mut vm = boot("linux/arm64", transport);
    let qemu = vm.qemu_pid();
    let run_dir = vm.run_dir().to_path_buf();
    let mut tar = std::fs::File::open(rootfs("arm64")).unwrap();
    vm.unpack("rootfs", &mut tar, &AtomicBool::new(false)).unwrap();

    for code in [0, 1, 42] {
        let (status, _, _) = run(&mut vm, &format!("exit {code}"), None, None);
        assert_eq!(status, ExitStatus::Code { code }, "exit {code}");
    }
    let (status, _, _) = run(&mut vm, "kill -KILL $$", None, None);
    assert_eq!(status, ExitStatus::Signal { signal: 9 });

    // 10 MB of stdout, intact and in order: the guest's checksum on stderr
    // must match ours of what arrived.
    let (status, out, err) =
        run(&mut vm, "head -c 10485760 /dev/urandom > /tmp/r && sha256sum /tmp/r >&2 && cat /tmp/r", None, None);
    assert_eq!(status, ExitStatus::Code { code: 0 });
    assert_eq!(out.len(), 10 << 20);
    let ours = hex(&Sha256::digest(&out));
    let theirs = String::from_utf8_lossy(&err);
    assert!(theirs.starts_with(&ours), "guest sha256 {theirs:?}, received {ours}");

    let input: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let (status, out, _) = run(&mut vm, "cat", Some(input.clone()), None);
    assert_eq!(status, ExitStatus::Code { code: 0 });
    assert_eq!(out, input, "stdin should come back through cat unchanged");

    let started = Instant::now();
    let (status, _, _) = run(&mut vm, "sleep 600", None, Some(1500));
    assert_eq!(status, ExitStatus::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(30));

    vm.shutdown();
    wait_gone(&[qemu], Duration::from_secs(10));
    assert!(!run_dir.exists(), "run directory {} left behind", run_dir.display());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn serial_transport_contract() {
    exec_contract(TransportChoice::Serial);
}

#[test]
fn vsock_transport_contract() {
    assert!(
        kiln::vm::transport::choose(TransportChoice::Vsock, None).is_ok(),
        "no vsock on this host: install vhost-device-vsock (scripts/setup-host.sh)"
    );
    exec_contract(TransportChoice::Vsock);
}

fn vm_exec(tmp: &Tmp, platform: &str, args: &[&str]) -> Output {
    vm_exec_with(tmp, platform, &[], args)
}

fn vm_exec_with(tmp: &Tmp, platform: &str, options: &[&str], args: &[&str]) -> Output {
    let rootfs = rootfs(&platform.parse::<Platform>().unwrap().arch_key());
    let mut cmd = kiln(tmp);
    cmd.args(["vm", "exec", "--platform", platform]).args(options).arg("--rootfs").arg(&rootfs);
    cmd.arg("--").args(args).output().unwrap()
}

#[test]
fn cli_uname_arm64() {
    let tmp = Tmp::new();
    let out = vm_exec(&tmp, "linux/arm64", &["/bin/busybox", "uname", "-m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "aarch64\n");
    tmp.assert_empty();
}

#[test]
fn cli_uname_amd64() {
    let tmp = Tmp::new();
    let out = vm_exec(&tmp, "linux/amd64", &["/bin/busybox", "uname", "-m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x86_64\n");
    tmp.assert_empty();
}

#[test]
fn cli_uname_armv7() {
    let tmp = Tmp::new();
    let out = vm_exec(&tmp, "linux/arm/v7", &["/bin/busybox", "uname", "-m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "armv7l\n");
    tmp.assert_empty();
}

/// debootstrap in a container leaves `proc -> /proc`; distributions ship
/// `etc/resolv.conf -> ../run/...`. The command still gets working mounts,
/// and no link leads out of the root.
#[test]
fn cli_root_with_symlinked_mount_points() {
    let tmp = Tmp::new();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("links.tar");
    rootfs_links::with_links(
        &rootfs("arm64"),
        &root,
        &[
            ("proc", "/proc"),
            ("sys", "../sys"),
            ("dev/pts", "/dev/pts"),
            ("tmp", "../../../var/tmp"),
            ("etc/resolv.conf", "../../../../run/systemd/resolve/stub-resolv.conf"),
            ("etc/hosts", "/etc/hosts"),
        ],
    );
    let script = "set -e; \
        read -r pid rest < /proc/self/stat; [ \"$pid\" -gt 1 ]; echo proc ok; \
        [ -d /proc/1 ] && [ -e /sys/kernel ] && echo sys ok; \
        [ -c /dev/null ] && [ -e /dev/pts/ptmx ] && echo dev ok; \
        echo x > /tmp/f && [ \"$(cat /var/tmp/f)\" = x ] && [ \"$(readlink /tmp)\" = ../../../var/tmp ] && echo tmp ok; \
        [ -f /run/systemd/resolve/stub-resolv.conf ] && grep -q nameserver /etc/resolv.conf && echo resolv ok; \
        grep -q localhost /etc/hosts && echo hosts ok";
    let mut cmd = kiln(&tmp);
    cmd.args(["vm", "exec", "--platform", "linux/arm64", "--rootfs"]).arg(&root);
    let out = cmd.args(["--", "/bin/sh", "-c", script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "proc ok\nsys ok\ndev ok\ntmp ok\nresolv ok\nhosts ok\n");
    tmp.assert_empty();
}

#[test]
fn cli_exit_code_passes_through() {
    let tmp = Tmp::new();
    let out = vm_exec(&tmp, "linux/arm64", &["/bin/sh", "-c", "echo out; echo err >&2; exit 42"]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    tmp.assert_empty();
}

/// Starts `kiln vm exec ... sleep`, waits until the command runs, returns the child.
fn start_sleeper(tmp: &Tmp, transport: &str) -> std::process::Child {
    let mut cmd = kiln(tmp);
    cmd.args(["vm", "exec", "--transport", transport, "--platform", "linux/arm64", "--rootfs"])
        .arg(rootfs("arm64"))
        .args(["--", "/bin/sh", "-c", "echo started; exec sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 8];
    stdout.read_exact(&mut buf).expect("the command should start");
    assert_eq!(&buf, b"started\n");
    child
}

#[test]
fn qemu_killed_mid_command_is_reported_and_cleaned_up() {
    let tmp = Tmp::new();
    let child = start_sleeper(&tmp, "vsock");
    let helpers = children_of(child.id());
    let qemu = helpers
        .iter()
        .copied()
        .find(|&p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().starts_with("qemu"))
        .expect("qemu is a child of kiln");
    Command::new("kill").args(["-KILL", &qemu.to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped unexpectedly"), "{stderr}");
    assert!(stderr.contains("console"), "the console tail should be shown: {stderr}");
    wait_gone(&helpers, Duration::from_secs(5));
    tmp.assert_empty();
}

#[test]
fn ctrl_c_stops_the_command_and_the_vm() {
    let tmp = Tmp::new();
    let child = start_sleeper(&tmp, "serial");
    let helpers = children_of(child.id());
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(15), "Ctrl-C took {:?}", started.elapsed());
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    wait_gone(&helpers, Duration::from_secs(5));
    tmp.assert_empty();
}

#[test]
fn killing_kiln_takes_qemu_and_vsock_daemon_with_it() {
    let tmp = Tmp::new();
    let mut child = start_sleeper(&tmp, "vsock");
    let helpers = children_of(child.id());
    assert!(helpers.len() >= 2, "expected qemu and vhost-device-vsock, got {helpers:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_gone(&helpers, Duration::from_secs(5));
    // The run directory of a killed kiln is removed by the next VM start.
    let out = vm_exec(&tmp, "linux/arm64", &["/bin/true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tmp.assert_empty();
}

#[test]
fn unbootable_kernel_fails_within_the_boot_timeout() {
    let tmp = Tmp::new();
    let bogus = tmp.path().join("not-a-kernel");
    std::fs::write(&bogus, vec![0u8; 4096]).unwrap();
    let started = Instant::now();
    let out = kiln(&tmp)
        .args(["vm", "exec", "--platform", "linux/arm64", "--boot-timeout", "8", "--kernel"])
        .arg(&bogus)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    std::fs::remove_file(&bogus).unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not come up within 8s"), "{stderr}");
    tmp.assert_empty();
}

// ---- RUN steps: overlay roots, snapshots of the upper directory ----

/// One PAX record (`LEN KEY=VALUE\n`, LEN counting itself).
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

fn tar_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_000_000);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// `security.capability` v2 granting CAP_NET_BIND_SERVICE (bit 10), permitted and effective.
const CAP_NET_BIND_SERVICE: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A second image layer in OCI form: a whiteout of /etc/group, an opaque
/// /usr (hiding busybox's /usr/bin), and a file carrying a capability xattr.
fn oci_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    tar_entry(&mut b, "etc/.wh.group", tar::EntryType::Regular, 0o644, b"");
    tar_entry(&mut b, "usr/", tar::EntryType::Directory, 0o755, b"");
    tar_entry(&mut b, "usr/.wh..wh..opq", tar::EntryType::Regular, 0o644, b"");
    tar_entry(&mut b, "usr/new.txt", tar::EntryType::Regular, 0o644, b"from layer 1\n");
    let pax = pax_record("SCHILY.xattr.security.capability", &CAP_NET_BIND_SERVICE);
    tar_entry(&mut b, "PaxHeaders/capfile", tar::EntryType::XHeader, 0o644, &pax);
    tar_entry(&mut b, "bin/capfile", tar::EntryType::Regular, 0o755, b"cap\n");
    b.into_inner().unwrap()
}

fn overlay_run(
    vm: &mut Vm,
    lowers: &[&str],
    n: u32,
    no_network: bool,
    mounts: Vec<MountSpec>,
    script: &str,
) -> (ExitStatus, String, String) {
    let req = ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        root: Some(RootSpec::Overlay {
            lowers: lowers.iter().map(|l| l.to_string()).collect(),
            upper: format!("u/{n}"),
            work: format!("w/{n}"),
        }),
        no_network,
        mounts,
        timeout_ms: Some(120_000),
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = vm
        .exec(
            req,
            None,
            &mut |s, b| if s == stream::STDOUT { out.extend_from_slice(b) } else { err.extend_from_slice(b) },
            &AtomicBool::new(false),
        )
        .expect("exec");
    (status, String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}

/// What a docker RUN relies on, in one VM: layers with OCI whiteouts as
/// overlay lowers, the step's changes (and nothing the agent made) in its
/// upper directory, a manifest that says exactly what changed, file contents
/// readable on the host while frozen, and the next step seeing it all.
#[test]
fn run_steps_in_overlays_and_snapshot_their_upper_dirs() {
    let no = AtomicBool::new(false);
    let mut vm = boot("linux/arm64", TransportChoice::Serial);
    vm.unpack("l/0", &mut std::fs::File::open(rootfs("arm64")).unwrap(), &no).unwrap();
    vm.unpack("l/1", &mut std::io::Cursor::new(oci_layer()), &no).unwrap();
    // A bind source: an empty directory on the scratch disk.
    vm.unpack("shared", &mut std::io::Cursor::new(tar::Builder::new(Vec::new()).into_inner().unwrap()), &no).unwrap();
    let mounts = vec![
        MountSpec::Bind { source: "shared".into(), target: "/shared".into(), readonly: false },
        MountSpec::Bind { source: "shared".into(), target: "/ro".into(), readonly: true },
        MountSpec::Tmpfs { target: "/mnt/cache".into(), size_bytes: Some(1 << 20) },
    ];
    let script = r#"
        echo "pid=$$"
        # A process that escapes the process group: only the PID namespace stops it.
        busybox setsid sh -c 'sleep 3; echo alive > /shared/alive' &
        sleep 1000 &
        echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
        test -e /etc/group || echo "group hidden"
        test -e /usr/bin || echo "usr/bin hidden"
        cat /usr/new.txt
        grep -q ' /mnt/cache tmpfs ' /proc/mounts && echo "tmpfs mounted"
        echo x > /ro/f 2>/dev/null || echo "ro refused"
        echo "dev=$(ls /dev | tr '\n' ' ')"
        stat -c '%a %t:%T' /dev/null
        set -e
        echo hello > /new.txt
        echo changed >> /etc/passwd
        rm /bin/ls
        rm -r /usr && mkdir /usr && echo again > /usr/again
        ln /new.txt /hard.txt
        ln -s new.txt /sym
        busybox mkfifo /fifo
        busybox mknod /cdev c 1 3
        echo s > /suid && chmod 4755 /suid
        touch /bin/capfile
    "#;
    let started = Instant::now();
    let (status, out, err) = overlay_run(&mut vm, &["l/1", "l/0"], 1, true, mounts.clone(), script);
    assert_eq!(status, ExitStatus::Code { code: 0 }, "stdout:\n{out}\nstderr:\n{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "the background sleep kept the step alive");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["pid=1", "ifaces=lo ", "group hidden", "usr/bin hidden", "from layer 1", "tmpfs mounted", "ro refused",
         "dev=fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ", "666 1:3"],
        "stderr:\n{err}"
    );

    let mut entries = vm.snapshot("u/1", &no).expect("snapshot");
    // The agent lists entries in walk order; layers are written in one order.
    kiln_protocol::sort_for_layer(&mut entries);
    let file = |size: u64, link: Option<&str>| EntryKind::File { size, link: link.map(String::from) };
    // Of two hardlinked names, the one the agent walked first holds the
    // content (either way round); the summary below lists both as files.
    let kind_of = |p: &str| entries.iter().find(|e| e.path == p).map(|e| e.kind.clone());
    let pair = (kind_of("hard.txt"), kind_of("new.txt"));
    assert!(
        pair == (Some(file(6, None)), Some(file(6, Some("hard.txt"))))
            || pair == (Some(file(6, Some("new.txt"))), Some(file(6, None))),
        "hard.txt and new.txt should be one file and a link to it: {pair:?}"
    );
    let summary: Vec<(String, EntryKind, u32)> = entries
        .iter()
        .map(|e| match e.path.as_str() {
            "hard.txt" | "new.txt" => (e.path.clone(), file(6, None), e.mode),
            _ => (e.path.clone(), e.kind.clone(), e.mode),
        })
        .collect();
    let passwd_len = match entries.iter().find(|e| e.path == "etc/passwd").map(|e| &e.kind) {
        Some(EntryKind::File { size, .. }) => *size,
        other => panic!("etc/passwd should be a changed file, got {other:?}"),
    };
    let expected: Vec<(String, EntryKind, u32)> = [
        ("bin", EntryKind::Dir { opaque: false }, 0o755),
        ("bin/capfile", file(4, None), 0o755),
        ("bin/ls", EntryKind::Whiteout, 0),
        ("cdev", EntryKind::CharDevice { major: 1, minor: 3 }, 0o644),
        ("etc", EntryKind::Dir { opaque: false }, 0o755),
        ("etc/passwd", file(passwd_len, None), 0o644),
        ("fifo", EntryKind::Fifo, 0o644),
        ("hard.txt", file(6, None), 0o644),
        ("new.txt", file(6, None), 0o644),
        ("suid", file(2, None), 0o4755),
        ("sym", EntryKind::Symlink { target: "new.txt".into() }, 0o777),
        ("usr", EntryKind::Dir { opaque: true }, 0o755),
        ("usr/again", file(6, None), 0o644),
    ]
    .into_iter()
    .map(|(p, k, m)| (p.to_string(), k, m))
    .collect();
    assert_eq!(summary, expected, "no agent-made mount points (shared, ro, mnt, etc/resolv.conf, etc/hosts) may appear");
    let capfile = &entries[1];
    assert_eq!(capfile.xattrs, vec![Xattr { name: "security.capability".into(), value: CAP_NET_BIND_SERVICE.to_vec() }]);
    assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0));
    let new = entries.iter().find(|e| e.path == "new.txt").unwrap();
    assert!(new.mtime > 1_600_000_000, "mtime is the guest's clock at write time: {}", new.mtime);

    // Frozen: the host reads the step's files straight from the disk image.
    let image = ext4_view::Ext4::load_from_path(vm.scratch_image().expect("a scratch disk")).unwrap();
    assert_eq!(image.read("/u/1/new.txt").unwrap(), b"hello\n");
    let passwd = image.read_to_string("/u/1/etc/passwd").unwrap();
    assert!(passwd.ends_with("changed\n"), "{passwd:?}");
    assert_eq!(passwd.len() as u64, passwd_len);
    assert!(!image.exists("/u/1/etc/resolv.conf").unwrap());
    // Writing requests are refused while frozen instead of hanging the agent.
    let err = vm.unpack("l/9", &mut std::io::Cursor::new(oci_layer()), &no).unwrap_err().to_string();
    assert!(err.contains("frozen"), "{err}");
    let req = ExecRequest {
        argv: vec!["/bin/true".into()],
        root: Some(RootSpec::Overlay { lowers: vec!["l/0".into()], upper: "u/y".into(), work: "w/y".into() }),
        ..Default::default()
    };
    let err = vm.exec(req, None, &mut |_, _| {}, &no).unwrap_err().to_string();
    assert!(err.contains("frozen"), "{err}");
    vm.thaw(&no).expect("thaw");
    let err = vm.thaw(&no).unwrap_err().to_string();
    assert!(err.contains("not frozen"), "{err}");
    let err = vm.snapshot("u/nope", &no).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    let req = ExecRequest {
        argv: vec!["/bin/true".into()],
        cwd: "/nope".into(),
        root: Some(RootSpec::Overlay { lowers: vec!["l/0".into()], upper: "u/x".into(), work: "w/x".into() }),
        ..Default::default()
    };
    let err = vm.exec(req, None, &mut |_, _| {}, &no).unwrap_err().to_string();
    assert!(err.contains("working directory /nope"), "{err}");

    // The next step sees the first one's changes; the escaped process never
    // wrote. It only reads, and its /etc/resolv.conf mount point made
    // overlayfs copy /etc up: that copy must be gone, leaving an empty upper.
    std::thread::sleep(Duration::from_secs(4));
    let script = r#"
        echo "pid=$$"
        grep -q eth0 /proc/net/dev && echo "network"
        cat /new.txt /hard.txt /usr/again
        readlink /sym
        test -e /bin/ls || echo "ls deleted"
        test -e /usr/new.txt || echo "usr replaced"
        test -e /shared/alive && echo "escaped process survived"
        tail -n 1 /etc/passwd
        stat -c '%a %F' /suid /fifo /cdev
    "#;
    let (status, out, err) = overlay_run(&mut vm, &["u/1", "l/1", "l/0"], 2, false, mounts, script);
    assert_eq!(status, ExitStatus::Code { code: 0 }, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        out,
        "pid=1\nnetwork\nhello\nhello\nagain\nnew.txt\nls deleted\nusr replaced\nchanged\n\
         4755 regular file\n644 fifo\n644 character special file\n",
        "stderr:\n{err}"
    );
    let entries = vm.snapshot("u/2", &no).expect("snapshot");
    assert!(entries.is_empty(), "a read-only step leaves an empty upper dir: {entries:?}");

    // A host that drops a VM while its scratch disk is frozen (an aborted
    // build) still gets a prompt, clean power-off.
    let qemu = vm.qemu_pid();
    let started = Instant::now();
    vm.shutdown();
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown while frozen took {:?}", started.elapsed());
    wait_gone(&[qemu], Duration::from_secs(5));
}

/// A command with a terminal: it is the controlling tty of an interactive
/// shell, has the size asked for and follows resizes, input is typed into
/// it and the shell's exit code comes back.
#[test]
fn exec_with_a_terminal() {
    use kiln_protocol::TtySize;
    use std::cell::Cell;
    let mut vm = boot("linux/arm64", TransportChoice::Auto);
    let mut tar = std::fs::File::open(rootfs("arm64")).unwrap();
    vm.unpack("rootfs", &mut tar, &AtomicBool::new(false)).unwrap();
    let req = ExecRequest {
        argv: vec!["/bin/sh".into()],
        env: vec!["PATH=/bin".into(), "TERM=xterm".into()],
        cwd: "/".into(),
        root: Some(RootSpec::Dir { path: "rootfs".into() }),
        tty: Some(TtySize { rows: 33, cols: 101 }),
        timeout_ms: Some(120_000),
        ..Default::default()
    };
    // Typed ahead: the terminal buffers it until the shell reads.
    let typed = b"tty; stty size; sleep 3; stty size; exit 3\n".to_vec();
    let stdin = Box::new(std::io::Cursor::new(typed)) as Box<dyn Read + Send>;
    let (out, other) = (std::cell::RefCell::new(Vec::new()), Cell::new(false));
    let resized = Cell::new(false);
    let status = vm
        .exec_resizable(
            req,
            Some(stdin),
            &mut |s, b| {
                if s == stream::STDOUT {
                    out.borrow_mut().extend_from_slice(b)
                } else {
                    other.set(true)
                }
            },
            // Once the first size is out, the user's terminal grows.
            &mut || {
                let first_seen = String::from_utf8_lossy(&out.borrow()).contains("33 101");
                (first_seen && !resized.replace(true)).then_some(TtySize { rows: 50, cols: 120 })
            },
            &AtomicBool::new(false),
        )
        .expect("exec");
    let out = String::from_utf8_lossy(&out.into_inner()).into_owned();
    assert_eq!(status, ExitStatus::Code { code: 3 }, "{out}");
    assert!(out.contains("/dev/pts/"), "tty should name a pty: {out:?}");
    assert!(!out.contains("not a tty"), "{out:?}");
    assert!(out.contains("33 101\r\n"), "initial size: {out:?}");
    assert!(out.contains("50 120\r\n"), "size after the resize: {out:?}");
    assert!(!other.get(), "with a terminal everything comes on stdout");
    vm.shutdown();
}
