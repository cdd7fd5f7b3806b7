//! VM integration tests: real guests under QEMU (arm64 under TCG, amd64 with
//! KVM where usable), over both transports.
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
use kiln_protocol::{stream, ExecRequest, ExitStatus, RootSpec};
use sha2::{Digest, Sha256};

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

fn children_of(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-P", &pid.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "processes {pids:?} outlived kiln");
        std::thread::sleep(Duration::from_millis(50));
    }
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
        kiln::vm::transport::choose(TransportChoice::Vsock).is_ok(),
        "no vsock on this host: install vhost-device-vsock (scripts/setup-host.sh)"
    );
    exec_contract(TransportChoice::Vsock);
}

fn vm_exec(tmp: &Tmp, platform: &str, args: &[&str]) -> Output {
    vm_exec_with(tmp, platform, &[], args)
}

fn vm_exec_with(tmp: &Tmp, platform: &str, options: &[&str], args: &[&str]) -> Output {
    let arch = platform.rsplit('/').next().unwrap();
    let rootfs = rootfs(arch);
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
