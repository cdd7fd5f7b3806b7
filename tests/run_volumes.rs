#![cfg(target_os = "linux")]
//! `kiln run -v` / `--mount type=bind`: host directories shared live with
//! the container over virtio-fs (one virtiofsd per directory).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::build_env::Env;
use support::processes::{children_of, wait_gone};

#[test]
fn run_shares_host_directories_read_write_and_read_only() {
    support::require("virtiofsd", "cargo install virtiofsd --locked");
    let env = Env::new();
    env.import_busybox("arm64", "bb");
    let (rw, ro) = (env.path("rw"), env.path("ro"));
    for dir in [&rw, &ro] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("in.txt"), format!("host file in {}\n", dir.file_name().unwrap().to_string_lossy())).unwrap();
    }
    // The working directory may be a share (docker run -v $PWD:/src -w /src).
    let script = "cat in.txt; echo out > /data/out.txt; \
                  cat /deep/ro/in.txt; echo no > /deep/ro/denied.txt || echo ro-refused";
    let mut kiln = env
        .kiln()
        .args(["run", "-v", &format!("{}:/data", rw.display())])
        .args(["--mount", &format!("type=bind,source={},target=/deep/ro,readonly", ro.display())])
        .args(["-w", "/data", "bb", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every helper kiln starts (QEMU, virtiofsd, ...), by pid and name, while it runs.
    let mut helpers = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while kiln.try_wait().unwrap().is_none() {
        for pid in children_of(kiln.id()) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            helpers.entry(pid).or_insert_with(|| comm.trim().to_string());
        }
        assert!(Instant::now() < deadline, "kiln run did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = kiln.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kiln run failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout, "host file in rw\nhost file in ro\nro-refused\n", "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    // The guest's write is on the host, owned by whoever runs kiln.
    let written = rw.join("out.txt");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "out\n");
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), std::fs::metadata(&rw).unwrap().uid());
    assert!(!ro.join("denied.txt").exists());
    // One virtiofsd per share; none of them, nor QEMU, outlives kiln.
    let daemons = helpers.values().filter(|c| c.as_str() == "virtiofsd").count();
    assert_eq!(daemons, 2, "kiln's helpers: {helpers:?}");
    wait_gone(&helpers.keys().copied().collect::<Vec<_>>(), Duration::from_secs(5));
    env.assert_tmp_empty();
}

#[test]
fn run_volume_errors_name_the_cause() {
    let env = Env::new();
    let dir = env.path("share");
    std::fs::create_dir(&dir).unwrap();
    let fails = |args: &[&str], path: Option<&str>| {
        let mut cmd = env.kiln();
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        let out = cmd.arg("run").args(args).args(["bb", "true"]).output().unwrap();
        assert!(!out.status.success(), "kiln run {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = format!("{}/nope:/data", dir.display());
    let err = fails(&["-v", &missing], None);
    assert!(err.contains("does not exist"), "{err}");
    let relative = format!("{}:data", dir.display());
    let err = fails(&["-v", &relative], None);
    assert!(err.contains("\"data\" must be absolute"), "{err}");
    // Checked before any pull or boot: a host without virtiofsd hears how to get it.
    let good = format!("{}:/data", dir.display());
    if std::path::Path::new("/usr/libexec/virtiofsd").exists() {
        return; // Debian's package: found off PATH too.
    }
    let err = fails(&["-v", &good], Some("/nonexistent"));
    assert!(err.contains("virtiofsd, which is not installed") && err.contains("cargo install virtiofsd"), "{err}");
    env.assert_tmp_empty();
}
