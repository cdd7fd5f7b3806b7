#![cfg(unix)]
//! Registry conventions docker and podman users rely on: per-host certs.d
//! CAs and client certificates, TLS options for `kiln build`, podman's
//! credential files, identity (refresh) tokens, and loopback never proxied.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::oci::{Compression, Store};
use kiln::registry::{PullOptions, PushOptions, Reference};
use support::token_issuer::{start_issuer, Accepts, ISSUER, SERVICE};
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

/// A TLS registry holding an arm64 base image; returns (CA, registry, base reference).
fn tls_registry_with_base(seed: u64) -> (TestCa, RegistryServer, String) {
    let ca = TestCa::new();
    let reg = RegistryServer::start(RegistrySetup { tls: Some((ca.server_cert(), ca.server_key())), ..Default::default() });
    let src = temp_store();
    let image = build_image(&src.store, seed, &[30_000], "linux/arm64", Compression::Gzip);
    let base = format!("{}/conv/base:1", reg.addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client(None, Some(ca.ca())).push(&src.store, &image, &Reference::parse(&base).unwrap(), &PushOptions::default())).unwrap();
    (ca, reg, base)
}

/// The labels of an image in a registry, pulled with `ca`.
fn remote_labels(reference: &str, ca: &Path) -> serde_json::Value {
    let back = temp_store();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pulled = rt
        .block_on(client(None, Some(ca.to_path_buf())).pull(&back.store, &Reference::parse(reference).unwrap(), &PullOptions::default()))
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&back.store.read_blob(pulled.descriptor.digest(), None).unwrap()).unwrap();
    let digest: kiln::oci::Digest = manifest["config"]["digest"].as_str().unwrap().parse().unwrap();
    let config: serde_json::Value = serde_json::from_slice(&back.store.read_blob(&digest, None).unwrap()).unwrap();
    config["config"]["Labels"].clone()
}

#[test]
fn build_pulls_pushes_and_exports_cache_with_ca_cert_or_skipped_verification() {
    let (ca, reg, base) = tls_registry_with_base(61);
    let ca_path = ca.ca();
    let build = |flags: &[&str], label: &str| {
        let env = build_env::Env::new();
        env.write("Dockerfile", &format!("FROM {base}\nLABEL built.with={label}\n"));
        let out = env
            .kiln()
            .env_remove("KILN_CA_CERTS")
            .env_remove("KILN_INSECURE_SKIP_TLS_VERIFY")
            .args(["build", "--progress", "plain", "--platform", "linux/arm64"])
            .args(flags)
            .arg(env.ctx())
            .output()
            .unwrap();
        env.assert_tmp_empty();
        out
    };

    // Neither option: the FROM pull fails on the certificate and says what to do.
    let out = build(&[], "none");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.to_lowercase().contains("certificate") && err.contains("--insecure-skip-tls-verify"), "{err}");

    // --ca-cert: FROM pull, --push and a registry cache export all trust it.
    let with_ca = format!("{}/conv/with-ca:1", reg.addr);
    let cache = format!("type=registry,ref={}/conv/cache:1", reg.addr);
    let out = build(&["--ca-cert", ca_path.to_str().unwrap(), "-t", &with_ca, "--push", "--cache-to", &cache], "ca-cert");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(remote_labels(&with_ca, &ca_path)["built.with"], "ca-cert");

    // --insecure-skip-tls-verify for this registry only: FROM pull, cache import and --push.
    let skipped = format!("{}/conv/skipped:1", reg.addr);
    let out = build(&["--insecure-skip-tls-verify", &reg.addr, "-t", &skipped, "--push", "--cache-from", &cache], "skip-verify");
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(!log.contains("warning"), "the cache import worked without a warning: {log}");
    assert_eq!(remote_labels(&skipped, &ca_path)["built.with"], "skip-verify");

    // Skipping verification for another registry does not cover this one.
    let out = build(&["--insecure-skip-tls-verify", "registry.example:5000"], "other");
    assert!(!out.status.success());

    // The same option on pull (and push, which shares the flags).
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = kiln_in(data.path(), home.path()).args(["pull", "--platform", "linux/arm64", &skipped]).output().unwrap();
    assert!(!out.status.success());
    run(kiln_in(data.path(), home.path()).args(["pull", "--platform", "linux/arm64", "--insecure-skip-tls-verify", &reg.addr, &skipped]));
}

const USER: &str = "pusher";
const PASSWORD: &str = "basic-pa55-not-used-for-pulls";
const REFRESH: &str = "refresh-t0ken-from-an-oauth-login";

fn write_json(path: &Path, value: serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, value.to_string()).unwrap();
}

fn identity_token_config(registry: &str, token: &str) -> serde_json::Value {
    serde_json::json!({"auths": {registry: {"identitytoken": token}}})
}

#[test]
fn identity_tokens_use_the_refresh_token_flow_from_every_credential_file() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let issuer = start_issuer(rt.handle(), Accepts { basic: Some((USER.into(), PASSWORD.into())), refresh_token: Some(REFRESH.into()) });
    let reg = RegistryServer::start(RegistrySetup {
        token: Some((issuer.realm.clone(), SERVICE.into(), ISSUER.into(), issuer.cert.clone())),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let src = temp_store();
    let image = build_image(&src.store, 71, &[10_000], "linux/amd64", Compression::Gzip);
    let app = format!("{}/conv/app:1", reg.addr);
    let pusher = client(Some(docker_config(work.path(), &reg.addr, USER, PASSWORD)), None);
    rt.block_on(pusher.push(&src.store, &image, &Reference::parse(&app).unwrap(), &PushOptions::default())).unwrap();
    issuer.requests.lock().unwrap().clear();

    // A pull with kiln's own data dir and HOME; `setup` writes credential files into them.
    let pull = |setup: &dyn Fn(&Path, &Path, &mut Command)| {
        let data = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let mut cmd = kiln_in(data.path(), home.path());
        setup(data.path(), home.path(), &mut cmd);
        cmd.args(["pull", "--platform", "linux/amd64", &app]).output().unwrap()
    };
    let refreshed = || issuer.requests.lock().unwrap().iter().filter(|(u, s)| u == "refresh:kiln" && s == &["repository:conv/app:pull"]).count();

    // docker's config.json with an identitytoken entry: the POST flow, never Basic.
    let out = pull(&|data, _, _| write_json(&data.join("docker/config.json"), identity_token_config(&reg.addr, REFRESH)));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(refreshed(), 1, "{:?}", issuer.requests.lock().unwrap());
    assert!(issuer.requests.lock().unwrap().iter().all(|(u, _)| u == "refresh:kiln"), "{:?}", issuer.requests.lock().unwrap());

    // A wrong refresh token: refused, said so, the token never shown.
    let out = pull(&|data, _, _| write_json(&data.join("docker/config.json"), identity_token_config(&reg.addr, "stale-token-xyz")));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("rejected the stored identity token") && err.contains(&reg.addr), "{err}");
    assert!(!err.contains("stale-token-xyz"), "{err}");

    // A credential helper answering with the user name <token> (as ACR's does).
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-kilntoken");
    std::fs::write(&helper, format!("#!/bin/sh\nread server\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"<token>\",\"Secret\":\"{REFRESH}\"}}'\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
    let before = refreshed();
    let out = pull(&|data, _, cmd| {
        write_json(&data.join("docker/config.json"), serde_json::json!({"credHelpers": {&reg.addr: "kilntoken"}}));
        cmd.env("PATH", &path);
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(refreshed(), before + 1);

    // podman's files: $XDG_RUNTIME_DIR/containers/auth.json, then $HOME/.config/containers/auth.json.
    let runtime = tempfile::tempdir().unwrap();
    let out = pull(&|_, _, cmd| {
        write_json(&runtime.path().join("containers/auth.json"), identity_token_config(&reg.addr, REFRESH));
        cmd.env("XDG_RUNTIME_DIR", runtime.path());
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let out = pull(&|_, home, _| write_json(&home.join(".config/containers/auth.json"), identity_token_config(&reg.addr, REFRESH)));
    assert!(out.status.success(), "{}", stderr(&out));

    // Which wins: $REGISTRY_AUTH_FILE over docker's config over podman's files.
    let auth_file = tempfile::tempdir().unwrap();
    let out = pull(&|data, _, cmd| {
        write_json(&auth_file.path().join("auth.json"), identity_token_config(&reg.addr, "stale-token-xyz"));
        write_json(&data.join("docker/config.json"), identity_token_config(&reg.addr, REFRESH));
        cmd.env("REGISTRY_AUTH_FILE", auth_file.path().join("auth.json"));
    });
    assert!(!out.status.success(), "REGISTRY_AUTH_FILE's (wrong) token must be the one used");
    let out = pull(&|data, home, _| {
        write_json(&data.join("docker/config.json"), identity_token_config(&reg.addr, REFRESH));
        write_json(&home.join(".config/containers/auth.json"), identity_token_config(&reg.addr, "stale-token-xyz"));
    });
    assert!(out.status.success(), "docker's config wins over podman's: {}", stderr(&out));

    // `kiln login` writes the file read first: $REGISTRY_AUTH_FILE when set, as podman login does.
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let target = auth_file.path().join("login.json");
    run(kiln_in(data.path(), home.path()).env("REGISTRY_AUTH_FILE", &target).args(["login", &reg.addr, "-u", USER, "--password", PASSWORD]));
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&target).unwrap()).unwrap();
    assert!(written["auths"][&reg.addr]["auth"].is_string(), "{written}");
    assert!(!data.path().join("docker/config.json").exists());
}

/// A proxy that records the request line of each connection and refuses it.
fn recording_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    // Runs until the test process ends.
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut line = String::new();
            let _ = std::io::BufReader::new(&conn).read_line(&mut line);
            log.lock().unwrap().push(line.trim().to_string());
            let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

#[test]
fn loopback_registries_are_never_proxied() {
    let reg = RegistryServer::start(RegistrySetup::default());
    let (proxy, seen) = recording_proxy();
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    local_image(data.path(), "kiln.test/proxied:1", 81);
    let with_proxy = |cmd: &mut Command| {
        cmd.env("HTTPS_PROXY", &proxy).env("http_proxy", &proxy).env("NO_PROXY", "corp.example");
    };
    let dest = format!("{}/conv/proxied:1", reg.addr);
    let mut push = kiln_in(data.path(), home.path());
    with_proxy(&mut push);
    run(push.args(["push", "kiln.test/proxied:1", &dest]));
    let data2 = tempfile::tempdir().unwrap();
    let mut pull = kiln_in(data2.path(), home.path());
    with_proxy(&mut pull);
    run(pull.args(["pull", "--platform", "linux/amd64", &dest]));
    assert!(seen.lock().unwrap().is_empty(), "loopback went through the proxy: {:?}", seen.lock().unwrap());

    // Any other registry does go through it.
    let mut remote = kiln_in(data2.path(), home.path());
    with_proxy(&mut remote);
    let out = remote.args(["pull", "registry.kiln-proxy-test.example:5000/a:1"]).output().unwrap();
    assert!(!out.status.success());
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|l| l.starts_with("CONNECT registry.kiln-proxy-test.example:5000")), "{seen:?}");
}
