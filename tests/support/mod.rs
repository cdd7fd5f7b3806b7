//! Shared helpers for the registry and OCI layout integration tests: tools
//! that must be installed, a real `docker-registry` on 127.0.0.1, a test CA,
//! and deterministic test images.
#![allow(dead_code)]

pub mod build_env;
pub mod processes;
pub mod rootfs_links;
pub mod token_issuer;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::oci::{Compression, Descriptor, LayerWriter, MediaType, Store};
use kiln::registry::{Client, ClientOptions};

/// Fails (never skips) when a tool is missing, naming the Debian package.
pub fn require(bin: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{bin}` is not installed: this test needs it. Install the Debian package `{package}` (apt-get install {package}).");
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[derive(Default)]
pub struct RegistrySetup {
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    pub htpasswd: Option<PathBuf>,
    /// (realm URL, service, issuer, root cert bundle)
    pub token: Option<(String, String, String, PathBuf)>,
}

/// A `docker-registry` (distribution 2.8) on a free 127.0.0.1 port, killed on drop.
pub struct RegistryServer {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl RegistryServer {
    pub fn start(setup: RegistrySetup) -> Self {
        let bin = require("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = &setup.tls {
            cfg += &format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display());
            if let Some(ca) = &setup.client_ca {
                cfg += &format!("    clientcas:\n      - {}\n", ca.display());
            }
        }
        if let Some(h) = &setup.htpasswd {
            cfg += &format!("auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n", h.display());
        }
        if let Some((realm, service, issuer, bundle)) = &setup.token {
            cfg += &format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                bundle.display()
            );
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut server = Self { child, addr, dir };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited ({status}) before listening:\n{}", self.log());
            }
            if TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {} within 20 s:\n{}", self.addr, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn openssl(dir: &Path, args: &[&str]) {
    require("openssl", "openssl");
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(d, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=kiln test CA"]);
        openssl(d, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(d, &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]);
        Self { dir }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    /// A client certificate (for mTLS) signed by this CA: (cert, key).
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        openssl(d, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=kiln test client"]);
        std::fs::write(d.join("client-ext.cnf"), "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n").unwrap();
        openssl(d, &["x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "client.pem", "-days", "2", "-extfile", "client-ext.cnf"]);
        (d.join("client.pem"), d.join("client.key"))
    }
}

pub fn htpasswd_file(dir: &Path, user: &str, password: &str) -> PathBuf {
    let bin = require("htpasswd", "apache2-utils");
    let line = run(Command::new(bin).args(["-Bbn", user, password]));
    let path = dir.join("htpasswd");
    std::fs::write(&path, line).unwrap();
    path
}

pub fn docker_config(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string()).unwrap();
    path
}

pub fn client(docker_config: Option<PathBuf>, ca: Option<PathBuf>) -> Client {
    Client::new(ClientOptions {
        auth_files: docker_config.into_iter().collect(),
        ca_certs: ca.into_iter().collect(),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap()
}

pub struct TempStore {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

pub fn temp_store() -> TempStore {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    TempStore { dir, store }
}

/// Counts of (blobs, tags, tmp entries): a failed operation must leave all three unchanged.
pub fn store_state(store: &Store) -> (usize, usize, usize) {
    let count = |p: PathBuf| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    (count(store.root().join("blobs/sha256")), store.tags().unwrap().len(), count(store.root().join("tmp")))
}

/// Deterministic pseudo-random bytes (incompressible, so sizes are real).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar layer with a text file naming the layer and a `size`-byte data file.
pub fn layer_tar(seed: u64, index: usize, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], kind: tar::EntryType, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("etc/", b"", tar::EntryType::Directory, 0o755);
    add(&format!("etc/layer-{index}.txt"), format!("seed {seed} layer {index}\n").as_bytes(), tar::EntryType::Regular, 0o644);
    add("data/", b"", tar::EntryType::Directory, 0o755);
    add(&format!("data/blob-{index}.bin"), &noise(size, seed * 1000 + index as u64), tar::EntryType::Regular, 0o644);
    b.into_inner().unwrap()
}

/// Builds and stores a single-platform image; returns its manifest descriptor.
pub fn build_image(store: &Store, seed: u64, layer_sizes: &[usize], platform: &str, compression: Compression) -> Descriptor {
    let platform: kiln::platform::Platform = platform.parse().unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (i, size) in layer_sizes.iter().enumerate() {
        let mut w = LayerWriter::new(store.blob_writer().unwrap(), compression).unwrap();
        w.write_all(&layer_tar(seed, i, *size)).unwrap();
        let layer = w.finish().unwrap();
        diff_ids.push(layer.diff_id.to_string());
        layers.push(layer.descriptor);
        history.push(serde_json::json!({"created": "2026-01-01T00:00:00Z", "created_by": format!("kiln test layer {i}")}));
    }
    let mut config = serde_json::json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    if let Some(v) = &platform.variant {
        config["variant"] = serde_json::json!(v);
    }
    let config = store.put_json(&config, MediaType::ImageConfig).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    store.put_json(&manifest, MediaType::ImageManifest).unwrap()
}

/// Builds and stores an index over `(manifest, platform)` pairs.
pub fn build_index(store: &Store, entries: &[(Descriptor, &str)]) -> Descriptor {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(d, p)| {
            let p: kiln::platform::Platform = p.parse().unwrap();
            let mut platform = serde_json::json!({"architecture": p.architecture, "os": p.os});
            if let Some(v) = &p.variant {
                platform["variant"] = serde_json::json!(v);
            }
            let mut v = serde_json::to_value(d).unwrap();
            v["platform"] = platform;
            v
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    store.put_json(&index, MediaType::ImageIndex).unwrap()
}

/// Asserts that every blob reachable from `root` is byte-identical in both stores.
pub fn assert_same_content(a: &Store, b: &Store, root: &Descriptor) {
    let ca = a.closure(root).unwrap();
    let cb = b.closure(root).unwrap();
    assert_eq!(ca.len(), cb.len(), "different number of blobs");
    for d in &ca {
        let x = a.read_blob(d.digest(), Some(d.size())).unwrap();
        let y = b.read_blob(d.digest(), Some(d.size())).unwrap();
        assert!(x == y, "blob {} differs", d.digest());
    }
}

pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

pub fn kiln(data_dir: &Path) -> Command {
    let mut c = Command::new(kiln_bin());
    c.env("KILN_DATA_DIR", data_dir).env("DOCKER_CONFIG", data_dir.join("docker")).stdin(Stdio::null());
    c
}
