//! kiln's promises from the user's side: the nginx example built for arm64
//! and served through `kiln run -p`, a multi-platform image pushed to a real
//! registry and each variant run, a cross-compiling multi-stage build, and
//! RUN cache/secret mounts. Results are checked with curl, skopeo and the
//! image's own files, not with kiln's internals.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, require, RegistryServer, RegistrySetup};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str, how: &str) -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_FIXTURES").map(PathBuf::from).unwrap_or_else(|| repo().join(".cache/fixtures"));
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: {how} (scripts/test.sh does)", path.display());
    path
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env { dir: tempfile::tempdir().unwrap() };
        for d in ["data", "tmp", "ctx"] {
            std::fs::create_dir(env.path(d)).unwrap();
        }
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.path("ctx").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn kiln(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.env("KILN_DATA_DIR", self.path("data")).env("TMPDIR", self.path("tmp")).env_remove("SOURCE_DATE_EPOCH");
        cmd
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.kiln().args(args).output().unwrap();
        assert!(out.status.success(), "kiln {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn load_debian(&self, arch: &str) {
        let dir = fixture(&format!("debian-{arch}"), &format!("run scripts/make-debian-base.sh {arch}"));
        self.ok(&["load", "--name", &format!("kiln.local/debian:bookworm-{arch}"), dir.to_str().unwrap()]);
    }

    fn import_busybox(&self, arch: &str, name: &str) {
        let tar = fixture(&format!("busybox-{arch}.tar"), &format!("run scripts/make-busybox-rootfs.sh {arch}"));
        self.ok(&["import", "--platform", &format!("linux/{arch}"), tar.to_str().unwrap(), name]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fetches `url` with curl, retrying until it answers or `within` passes.
fn curl_until(url: &str, within: Duration, child: &mut std::process::Child) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = Command::new("curl").args(["-fsS", "--max-time", "5", url]).output().unwrap();
        if out.status.success() {
            return text(&out.stdout);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("kiln run exited ({status}) before serving:\n{err}");
        }
        assert!(Instant::now() < deadline, "{url} did not answer within {within:?}: {}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn nginx_example_builds_for_arm64_and_serves_its_page() {
    require("curl", "curl");
    let env = Env::new();
    env.load_debian("arm64");
    let example = repo().join("examples/nginx");
    let out = env.kiln().args(["build", "--progress", "plain", "--platform", "linux/arm64", "-t", "nginx-arm64"]).arg(&example).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let layout = env.path("layout");
    env.ok(&["save", "--format", "oci-dir", "-o", layout.to_str().unwrap(), "nginx-arm64"]);
    let inspect = Command::new("skopeo")
        .args(["inspect", "--override-arch", "arm64"])
        .arg(format!("oci:{}:latest", layout.display()))
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!((info["Architecture"].as_str(), info["Os"].as_str()), (Some("arm64"), Some("linux")));

    let port = free_port();
    let mut server = env
        .kiln()
        .args(["run", "-p", &format!("{port}:80"), "nginx-arm64"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let page = curl_until(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(120), &mut server);
    let index = std::fs::read_to_string(example.join("index.html")).unwrap();
    assert_eq!(page, index);
    Command::new("kill").args(["-INT", &server.id().to_string()]).status().unwrap();
    let status = server.wait().unwrap();
    assert!(!status.success(), "Ctrl-C stops kiln run");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the forwarded port is closed once the VM is gone"
    );
}

#[test]
fn multi_platform_image_is_one_index_and_each_variant_runs() {
    let registry = RegistryServer::start(RegistrySetup::default());
    let env = Env::new();
    env.import_busybox("arm64", "kiln.local/busybox:arm64");
    env.import_busybox("amd64", "kiln.local/busybox:amd64");
    env.ok(&["manifest", "create", "kiln.local/busybox:multi", "kiln.local/busybox:arm64", "kiln.local/busybox:amd64"]);
    env.write("Dockerfile", "FROM kiln.local/busybox:multi\nARG TARGETARCH\nRUN echo \"$TARGETARCH $(uname -m)\" > /built-for\n");
    let image = format!("{}/demo:multi", registry.addr);
    let mut cmd = env.kiln();
    cmd.args(["build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "--push", "-t", &image]).arg(env.path("ctx"));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let raw = Command::new("skopeo").args(["inspect", "--tls-verify=false", "--raw"]).arg(format!("docker://{image}")).output().unwrap();
    assert!(raw.status.success(), "{}", text(&raw.stderr));
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let mut platforms: Vec<String> = index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .map(|m| format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap()))
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    for (platform, arch, machine) in [("linux/arm64", "arm64", "aarch64"), ("linux/amd64", "amd64", "x86_64")] {
        let fresh = Env::new();
        fresh.ok(&["pull", "--platform", platform, &image]);
        let out = fresh.ok(&["run", "--platform", platform, &image, "sh", "-c", "cat /built-for; uname -m"]);
        assert_eq!(text(&out.stdout), format!("{arch} {machine}\n{machine}\n"));
    }
}

#[test]
fn cache_mounts_persist_and_secrets_leave_no_trace() {
    let env = Env::new();
    env.import_busybox("arm64", "kiln.local/busybox:arm64");
    let secret = "s3cr3t-value-do-not-store";
    std::fs::write(env.path("token"), secret).unwrap();
    // The Dockerfile names only the secret's digest, so any trace of the value came from the mount.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
    env.write(
        "Dockerfile",
        &format!(
            "FROM kiln.local/busybox:arm64\n\
             RUN --mount=type=cache,target=/cache,id=counter --mount=type=secret,id=tok \\\n \
             n=$(cat /cache/n 2>/dev/null || echo 0); echo $((n+1)) > /cache/n; echo count=$(cat /cache/n); \\\n \
             sha256sum /run/secrets/tok | grep -q {digest} && echo secret-ok > /result\n"
        ),
    );
    let build = |extra: &[&str]| {
        let mut cmd = env.kiln();
        cmd.args(["build", "--progress", "plain", "--platform", "linux/arm64", "--secret"])
            .arg(format!("id=tok,src={}", env.path("token").display()))
            .args(extra)
            .arg(env.path("ctx"));
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    assert!(build(&["-t", "test/mounts:1"]).contains("count=1"));
    let log = build(&["--no-cache", "-t", "test/mounts:2"]);
    assert!(log.contains("count=2"), "the cache volume survives between builds:\n{log}");
    assert!(!log.contains(secret));

    // Every blob of the store (layers, configs with history, manifests), every
    // build-cache entry and cache volume: no trace of the secret.
    let layout = env.path("layout");
    env.ok(&["save", "--format", "oci-dir", "-o", layout.to_str().unwrap(), "test/mounts:2"]);
    let mut checked = 0;
    for file in walk(&env.path("data")).into_iter().chain(walk(&layout)) {
        let bytes = std::fs::read(&file).unwrap();
        let mut all = bytes.clone();
        let _ = flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut all);
        let haystack = text(&all);
        assert!(!haystack.contains(secret), "the secret is in {}", file.display());
        checked += 1;
    }
    assert!(checked > 5);
    let bundle = env.path("bundle");
    let out = Command::new("umoci").args(["unpack", "--rootless", "--image"]).arg(format!("{}:2", layout.display())).arg(&bundle).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/result")).unwrap(), "secret-ok\n");
    assert!(!bundle.join("rootfs/cache/n").exists(), "the cache volume's contents are in no layer");
    assert!(!bundle.join("rootfs/run/secrets/tok").exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn cross_compiled_binary_from_a_build_platform_stage_runs_in_the_arm64_image() {
    let env = Env::new();
    env.load_debian("amd64");
    env.load_debian("arm64");
    env.write("hello.c", "#include <stdio.h>\n#include <sys/utsname.h>\nint main(void){struct utsname u;uname(&u);printf(\"hello from %s\\n\",u.machine);return 0;}\n");
    env.write(
        "Dockerfile",
        "FROM --platform=$BUILDPLATFORM kiln.local/debian:bookworm-amd64 AS build\n\
         ARG TARGETARCH\n\
         RUN --mount=type=cache,target=/var/cache/apt,id=apt-amd64 --mount=type=cache,target=/var/lib/apt/lists,id=lists-amd64 \\\n \
         apt-get update && apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross\n\
         COPY hello.c /src/\n\
         RUN test \"$TARGETARCH\" = arm64 && uname -m > /build-arch && aarch64-linux-gnu-gcc -static -O2 -o /hello /src/hello.c\n\
         FROM kiln.local/debian:bookworm-arm64\n\
         COPY --from=build /hello /usr/local/bin/hello\n\
         COPY --from=build /build-arch /build-arch\n\
         CMD [\"hello\"]\n",
    );
    let mut cmd = env.kiln();
    cmd.args(["build", "--progress", "plain", "--platform", "linux/arm64", "-t", "test/cross:1"]).arg(env.path("ctx"));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(log.contains("booting a linux/amd64 VM"), "the builder stage runs on the build platform:\n{log}");
    let out = env.ok(&["run", "test/cross:1"]);
    assert_eq!(text(&out.stdout), "hello from aarch64\n");
    let out = env.ok(&["run", "test/cross:1", "cat", "/build-arch"]);
    assert_eq!(text(&out.stdout), "x86_64\n", "the compiler ran on the build platform");
}
