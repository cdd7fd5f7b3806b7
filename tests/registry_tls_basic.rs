//! docker-registry over TLS (certificate from a test CA) with htpasswd Basic auth.

mod support;

use kiln::oci::Compression;
use kiln::registry::{Credentials, PullOptions, PushOptions, Reference, RegistryError};
use support::*;

const USER: &str = "kiln";
const PASSWORD: &str = "pa55-W0rd-not-in-logs";

struct Setup {
    _ca: TestCa,
    ca: std::path::PathBuf,
    reg: RegistryServer,
    work: tempfile::TempDir,
}

fn setup() -> Setup {
    let ca = TestCa::new();
    let work = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd_file(work.path(), USER, PASSWORD);
    let reg = RegistryServer::start(RegistrySetup {
        tls: Some((ca.server_cert(), ca.server_key())),
        htpasswd: Some(htpasswd),
        ..Default::default()
    });
    Setup { ca: ca.ca(), _ca: ca, reg, work }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_basic_auth_push_pull_round_trip() {
    let s = setup();
    let cfg = docker_config(s.work.path(), &s.reg.addr, USER, PASSWORD);
    let client = client(Some(cfg), Some(s.ca.clone()));
    let src = temp_store();
    let image = build_image(&src.store, 11, &[100_000, 10_000], "linux/arm64", Compression::Gzip);
    let amd = build_image(&src.store, 12, &[10_000], "linux/amd64", Compression::Gzip);
    let index = build_index(&src.store, &[(image.clone(), "linux/arm64"), (amd, "linux/amd64")]);
    let dest = Reference::parse(&format!("{}/secure/app:v1", s.reg.addr)).unwrap();
    client.push(&src.store, &index, &dest, &PushOptions::default()).await.unwrap();
    for target in [dest.clone(), dest.with_digest(index.digest().clone())] {
        let back = temp_store();
        let all = PullOptions { all_platforms: true, ..Default::default() };
        let pulled = client.pull(&back.store, &target, &all).await.unwrap();
        assert_eq!(pulled.descriptor.digest(), index.digest());
        assert_same_content(&src.store, &back.store, &index);
    }
    // The login check accepts the right password and rejects a wrong one.
    let anon = support::client(None, Some(s.ca.clone()));
    anon.check_credentials(&s.reg.addr, &Credentials { username: USER.into(), secret: PASSWORD.into() }).await.unwrap();
    let err = anon
        .check_credentials(&s.reg.addr, &Credentials { username: USER.into(), secret: "wrong-secret-xyz".into() })
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains("wrong-secret-xyz"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ca_bad_credentials_and_no_credentials_fail_clearly_without_touching_the_store() {
    let s = setup();
    let src = temp_store();
    let image = build_image(&src.store, 13, &[10_000], "linux/amd64", Compression::Gzip);
    let dest = Reference::parse(&format!("{}/secure/app:v1", s.reg.addr)).unwrap();
    let good = client(Some(docker_config(s.work.path(), &s.reg.addr, USER, PASSWORD)), Some(s.ca.clone()));
    good.push(&src.store, &image, &dest, &PushOptions::default()).await.unwrap();

    let dst = temp_store();
    let before = store_state(&dst.store);

    // No CA: TLS fails, and kiln does not fall back to plain HTTP against a TLS server.
    let err = client(None, None).pull(&dst.store, &dest, &PullOptions::default()).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    // Wrong password from the Docker config: 401, the password never shown.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = client(Some(docker_config(bad_dir.path(), &s.reg.addr, USER, "wrong-secret-xyz")), Some(s.ca.clone()));
    let err = bad.pull(&dst.store, &dest, &PullOptions::default()).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains(&s.reg.addr) && msg.contains("stored credentials"), "{msg}");
    assert!(!msg.contains("wrong-secret-xyz") && !msg.contains(PASSWORD), "{msg}");

    // No credentials at all: told to log in.
    let err = client(None, Some(s.ca.clone())).pull(&dst.store, &dest, &PullOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("kiln login"), "{err}");

    assert_eq!(store_state(&dst.store), before);
}

#[test]
fn cli_login_writes_docker_config_and_pull_uses_it() {
    let s = setup();
    let src = temp_store();
    let image = build_image(&src.store, 14, &[10_000], "linux/amd64", Compression::Gzip);
    let dest = Reference::parse(&format!("{}/secure/cli:v1", s.reg.addr)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = client(Some(docker_config(s.work.path(), &s.reg.addr, USER, PASSWORD)), Some(s.ca.clone()));
    rt.block_on(good.push(&src.store, &image, &dest, &PushOptions::default())).unwrap();

    let data = tempfile::tempdir().unwrap();
    let ca = s.ca.to_str().unwrap();
    // Wrong password: refused, nothing written.
    let out = kiln(data.path())
        .args(["login", &s.reg.addr, "-u", USER, "--password-stdin", "--ca-cert", ca])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"nope-nope\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rejected the username or password") && !stderr.contains("nope-nope"), "{stderr}");
    assert!(!data.path().join("docker/config.json").exists());

    let out = kiln(data.path())
        .args(["login", &s.reg.addr, "-u", USER, "--password-stdin", "--ca-cert", ca])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all_output.contains(PASSWORD));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(data.path().join("docker/config.json")).unwrap()).unwrap();
    assert!(cfg["auths"][&s.reg.addr]["auth"].is_string());

    run(kiln(data.path()).args(["pull", &dest.to_string(), "--ca-cert", ca]));
    let listing = run(kiln(data.path()).arg("images"));
    assert!(listing.contains(&dest.to_string()), "{listing}");

    run(kiln(data.path()).args(["logout", &s.reg.addr]));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(data.path().join("docker/config.json")).unwrap()).unwrap();
    assert!(cfg["auths"].get(&s.reg.addr).is_none());

    // logout takes the same --auth-file as login.
    let other = data.path().join("other-auth.json");
    std::fs::write(&other, serde_json::json!({"auths": {&s.reg.addr: {"auth": "dTpw"}}}).to_string()).unwrap();
    let out = run(kiln(data.path()).args(["logout", &s.reg.addr, "--auth-file", other.to_str().unwrap()]));
    assert!(out.contains("Removed credentials"), "{out}");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&other).unwrap()).unwrap();
    assert!(cfg["auths"].get(&s.reg.addr).is_none());
}

#[cfg(unix)]
#[test]
fn credential_helper_stores_and_supplies_credentials() {
    let s = setup();
    let src = temp_store();
    let image = build_image(&src.store, 15, &[5_000], "linux/amd64", Compression::Gzip);
    let dest = Reference::parse(&format!("{}/secure/helper:v1", s.reg.addr)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = client(Some(docker_config(s.work.path(), &s.reg.addr, USER, PASSWORD)), Some(s.ca.clone()));
    rt.block_on(good.push(&src.store, &image, &dest, &PushOptions::default())).unwrap();

    // A credential helper that keeps one entry in a file next to itself.
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        "#!/bin/sh\nd=$(dirname \"$0\")\ncase \"$1\" in\n  store) cat > \"$d/stored.json\" ;;\n  get) read server; [ -f \"$d/stored.json\" ] && cat \"$d/stored.json\" || { echo 'credentials not found in native keychain'; exit 1; } ;;\n  erase) rm -f \"$d/stored.json\" ;;\nesac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());

    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("docker")).unwrap();
    std::fs::write(data.path().join("docker/config.json"), r#"{"credsStore":"kilntest"}"#).unwrap();
    let ca = s.ca.to_str().unwrap();
    let out = kiln(data.path())
        .env("PATH", &path)
        .args(["login", &s.reg.addr, "-u", USER, "--password", PASSWORD, "--ca-cert", ca])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(data.path().join("docker/config.json")).unwrap();
    assert!(!config.contains(PASSWORD), "the secret went to the helper, not the config: {config}");
    let stored = std::fs::read_to_string(bin.path().join("stored.json")).unwrap();
    assert!(stored.contains(PASSWORD) && stored.contains(&s.reg.addr));

    let pulled = kiln(data.path()).env("PATH", &path).args(["pull", &dest.to_string(), "--ca-cert", ca]).output().unwrap();
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));

    run(kiln(data.path()).env("PATH", &path).args(["logout", &s.reg.addr]));
    assert!(!bin.path().join("stored.json").exists());
}
