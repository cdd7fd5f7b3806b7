//! Registry conventions docker and podman users rely on: per-host certs.d
//! CAs and client certificates, TLS options for `kiln build`, podman's
//! credential files, identity (refresh) tokens, and loopback never proxied.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::oci::{Compression, Store};
use support::*;

/// kiln with its own data dir, HOME and Docker config, and nothing of the
/// caller's credential or proxy environment.
fn kiln_in(data: &Path, home: &Path) -> Command {
    let mut c = kiln(data);
    c.env("HOME", home);
    for var in ["XDG_RUNTIME_DIR", "REGISTRY_AUTH_FILE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "KILN_CA_CERTS", "KILN_INSECURE_SKIP_TLS_VERIFY", "KILN_INSECURE_REGISTRIES"] {
        c.env_remove(var);
    }
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stores a small amd64 image in `data`'s store as `name`.
fn local_image(data: &Path, name: &str, seed: u64) {
    let store = Store::open(data.join("images")).unwrap();
    let image = build_image(&store, seed, &[20_000], "linux/amd64", Compression::Gzip);
    store.tag(name, &image).unwrap();
}

fn user_certs_dir(home: &Path, registry: &str) -> PathBuf {
    let dir = home.join(".config/containers/certs.d").join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn certs_d_ca_in_home_is_trusted_for_that_registry_only() {
    let ca = TestCa::new();
    let reg = RegistryServer::start(RegistrySetup { tls: Some((ca.server_cert(), ca.server_key())), ..Default::default() });
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    local_image(data.path(), "kiln.test/app:1", 51);
    let dest = format!("{}/conv/app:1", reg.addr);

    // Without the CA: a certificate error that says where a CA goes.
    let out = kiln_in(data.path(), home.path()).args(["push", "kiln.test/app:1", &dest]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.to_lowercase().contains("certificate") && err.contains("certs.d") && err.contains("--ca-cert"), "{err}");

    // A CA for another port of the same host is not used.
    let other = format!("127.0.0.1:{}", free_port());
    std::fs::copy(ca.ca(), user_certs_dir(home.path(), &other).join("ca.crt")).unwrap();
    let out = kiln_in(data.path(), home.path()).args(["push", "kiln.test/app:1", &dest]).output().unwrap();
    assert!(!out.status.success(), "a CA for {other} must not be trusted for {}", reg.addr);

    // rootless podman's $HOME/.config/containers/certs.d/HOST:PORT/ca.crt
    std::fs::copy(ca.ca(), user_certs_dir(home.path(), &reg.addr).join("ca.crt")).unwrap();
    run(kiln_in(data.path(), home.path()).args(["push", "kiln.test/app:1", &dest]));
    let data2 = tempfile::tempdir().unwrap();
    run(kiln_in(data2.path(), home.path()).args(["pull", "--platform", "linux/amd64", &dest]));
    let listing = run(kiln_in(data2.path(), home.path()).arg("images"));
    assert!(listing.contains(&dest), "{listing}");
}

#[test]
fn certs_d_client_certificate_is_shown_to_a_registry_requiring_mtls() {
    let ca = TestCa::new();
    let (cert, key) = ca.client_cert();
    let reg = RegistryServer::start(RegistrySetup {
        tls: Some((ca.server_cert(), ca.server_key())),
        client_ca: Some(ca.ca()),
        ..Default::default()
    });
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    local_image(data.path(), "kiln.test/mtls:1", 52);
    let dest = format!("{}/conv/mtls:1", reg.addr);
    let dir = user_certs_dir(home.path(), &reg.addr);
    std::fs::copy(ca.ca(), dir.join("ca.crt")).unwrap();

    // CA but no client certificate: the registry ends the handshake.
    let out = kiln_in(data.path(), home.path()).args(["push", "kiln.test/mtls:1", &dest]).output().unwrap();
    assert!(!out.status.success(), "the registry requires a client certificate");

    // A .cert without its .key: named, before any connection.
    std::fs::copy(&cert, dir.join("client.cert")).unwrap();
    let out = kiln_in(data.path(), home.path()).args(["push", "kiln.test/mtls:1", &dest]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("client.cert has no key") && err.contains("client.key is missing"), "{err}");

    std::fs::copy(&key, dir.join("client.key")).unwrap();
    run(kiln_in(data.path(), home.path()).args(["push", "kiln.test/mtls:1", &dest]));
    let data2 = tempfile::tempdir().unwrap();
    run(kiln_in(data2.path(), home.path()).args(["pull", "--platform", "linux/amd64", &dest]));
}
