//! A private kiln world for build tests: its own image store, TMPDIR (so a
//! test can check nothing is left behind) and build context; the kernel
//! cache is shared. Base images come from the fixtures scripts/test.sh makes.

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn fixture(name: &str, how: &str) -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/fixtures"));
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: {how} (scripts/test.sh does)", path.display());
    path
}

pub struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let env = Env { dir: tempfile::tempdir().unwrap() };
        for d in ["data", "tmp", "ctx"] {
            std::fs::create_dir(env.path(d)).unwrap();
        }
        env
    }

    /// An Env whose kiln has its own cache directory (`cache`), sharing only
    /// the downloaded guest kernels with the other tests.
    #[cfg(unix)]
    pub fn with_private_cache() -> Env {
        let env = Env::new();
        let shared = std::env::var_os("KILN_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
            let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
            xdg.unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache")).join("kiln")
        });
        std::fs::create_dir(env.path("cache")).unwrap();
        std::os::unix::fs::symlink(shared.join("kernels"), env.path("cache/kernels")).unwrap();
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn ctx(&self) -> PathBuf {
        self.path("ctx")
    }

    /// Writes a file of the build context.
    pub fn write(&self, rel: &str, content: &str) {
        let p = self.ctx().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn kiln(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.env("KILN_DATA_DIR", self.path("data")).env("TMPDIR", self.path("tmp")).env_remove("SOURCE_DATE_EPOCH");
        if self.path("cache").is_dir() {
            cmd.env("KILN_CACHE_DIR", self.path("cache"));
        }
        cmd
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.kiln().args(args).output().unwrap();
        assert!(out.status.success(), "kiln {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Loads the Debian base made by make-debian-base.sh as kiln.local/debian:bookworm-ARCH.
    pub fn load_debian(&self, arch: &str) {
        let dir = fixture(&format!("debian-{arch}"), &format!("run scripts/make-debian-base.sh {arch}"));
        self.ok(&["load", "--name", &format!("kiln.local/debian:bookworm-{arch}"), dir.to_str().unwrap()]);
    }

    /// Imports the busybox fixture as a one-layer image called `name`.
    pub fn import_busybox(&self, arch: &str, name: &str) {
        let tar = fixture(&format!("busybox-{arch}.tar"), &format!("run scripts/make-busybox-rootfs.sh {arch}"));
        self.ok(&["import", "--platform", &format!("linux/{arch}"), tar.to_str().unwrap(), name]);
    }

    pub fn tags(&self) -> String {
        String::from_utf8(self.ok(&["images"]).stdout).unwrap()
    }

    pub fn assert_tmp_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.path("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
    }
}
