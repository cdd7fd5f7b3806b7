//! The Bearer token flow against docker-registry configured for token auth,
//! with a small token issuer (RS256 JWTs signed via openssl) run by the test.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use kiln::oci::Compression;
use kiln::registry::{Credentials, PullOptions, PushOptions, Reference, RegistryError};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "builder";
const PASSWORD: &str = "t0ken-secret-never-logged";
const SERVICE: &str = "kiln-test-registry";
const ISSUER: &str = "kiln-test-issuer";

/// What the issuer saw: (user or "anonymous", requested scopes).
type Requests = Arc<Mutex<Vec<(String, Vec<String>)>>>;

struct Issuer {
    realm: String,
    cert: PathBuf,
    requests: Requests,
    _dir: tempfile::TempDir,
}

fn start_issuer(rt: &tokio::runtime::Handle) -> Issuer {
    let dir = tempfile::tempdir().unwrap();
    openssl(dir.path(), &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=kiln token issuer"]);
    openssl(dir.path(), &["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"]);
    let der = std::fs::read(dir.path().join("cert.der")).unwrap();
    let key = dir.path().join("key.pem");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let requests: Requests = Arc::default();
    let seen = requests.clone();
    rt.spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (der, key, seen) = (der.clone(), key.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let response = tokio::task::spawn_blocking(move || answer(&head, &der, &key, &seen)).await.unwrap();
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Issuer { realm, cert: dir.path().join("cert.pem"), requests, _dir: dir }
}

fn answer(head: &str, cert_der: &[u8], key: &Path, seen: &Requests) -> String {
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(|s| s.replace("%3A", ":").replace("%2F", "/").replace("%2C", ",").replace('+', " "))
        .collect();
    let basic = head
        .lines()
        .find_map(|l| l.strip_prefix("authorization: Basic ").or_else(|| l.strip_prefix("Authorization: Basic ")))
        .map(|b| String::from_utf8(STANDARD.decode(b.trim()).unwrap()).unwrap());
    let (user, grant_all) = match basic.as_deref().map(|b| b.split_once(':').unwrap()) {
        Some((u, p)) if u == USER && p == PASSWORD => (u.to_string(), true),
        Some(_) => {
            seen.lock().unwrap().push(("rejected".into(), scopes));
            return "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into();
        }
        // Anonymous users may pull anything and push nothing, as on Docker Hub.
        None => ("anonymous".to_string(), false),
    };
    seen.lock().unwrap().push((user.clone(), scopes.clone()));
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let (rest, actions) = s.rsplit_once(':')?;
            let (kind, name) = rest.split_once(':')?;
            let actions: Vec<&str> = actions.split(',').filter(|a| grant_all || *a == "pull").collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [STANDARD.encode(cert_der)]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 600, "nbf": now - 60, "iat": now,
        "jti": format!("{now}-{}", scopes.join(" ")), "access": access,
    });
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(signing_input.as_bytes()).unwrap();
    }
    let sig = child.wait_with_output().unwrap().stdout;
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig));
    let body = serde_json::json!({"token": token, "expires_in": 600}).to_string();
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

#[test]
fn bearer_flow_with_anonymous_and_authenticated_tokens_per_repository_scope() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let issuer = start_issuer(rt.handle());
    let reg = RegistryServer::start(RegistrySetup {
        token: Some((issuer.realm.clone(), SERVICE.into(), ISSUER.into(), issuer.cert.clone())),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let authed = client(Some(docker_config(work.path(), &reg.addr, USER, PASSWORD)), None);
    let anonymous = client(None, None);
    let src = temp_store();
    let image = build_image(&src.store, 31, &[80_000, 4_000], "linux/amd64", Compression::Gzip);
    let app = Reference::parse(&format!("{}/team/app:v1", reg.addr)).unwrap();

    // Anonymous push: the anonymous token carries no push right.
    let err = rt.block_on(anonymous.push(&src.store, &image, &app, &PushOptions::default())).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("kiln login"), "{err}");

    // Authenticated push, then a mount into another repository.
    rt.block_on(authed.push(&src.store, &image, &app, &PushOptions::default())).unwrap();
    let copy = Reference::parse(&format!("{}/team/copy:v1", reg.addr)).unwrap();
    let report = rt.block_on(authed.push(&src.store, &image, &copy, &PushOptions { mount_from: Some("team/app".into()) })).unwrap();
    assert_eq!(report.mounted, 3);

    // Anonymous pull works with an anonymous token, bit-identical.
    for target in [app.clone(), copy.with_digest(image.digest().clone())] {
        let back = temp_store();
        rt.block_on(anonymous.pull(&back.store, &target, &PullOptions::default())).unwrap();
        assert_same_content(&src.store, &back.store, &image);
    }

    let requests = issuer.requests.lock().unwrap().clone();
    let has = |user: &str, scopes: &[&str]| requests.iter().any(|(u, s)| u == user && s.iter().map(String::as_str).eq(scopes.iter().copied()));
    assert!(has("anonymous", &["repository:team/app:pull,push"]), "{requests:?}");
    assert!(has(USER, &["repository:team/app:pull,push"]), "{requests:?}");
    assert!(has(USER, &["repository:team/copy:pull,push", "repository:team/app:pull"]), "{requests:?}");
    assert!(has("anonymous", &["repository:team/app:pull"]), "{requests:?}");
    assert!(has("anonymous", &["repository:team/copy:pull"]), "{requests:?}");

    // Wrong password: the token server refuses; nothing stored, no secret shown.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = client(Some(docker_config(bad_dir.path(), &reg.addr, USER, "wrong-secret-xyz")), None);
    let dst = temp_store();
    let before = store_state(&dst.store);
    let err = rt.block_on(bad.pull(&dst.store, &app, &PullOptions::default())).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("rejected the stored credentials") && !msg.contains("wrong-secret-xyz"), "{msg}");
    assert_eq!(store_state(&dst.store), before);

    // Login check through the token server.
    rt.block_on(anonymous.check_credentials(&reg.addr, &Credentials { username: USER.into(), secret: PASSWORD.into() })).unwrap();
    let err = rt
        .block_on(anonymous.check_credentials(&reg.addr, &Credentials { username: USER.into(), secret: "nope".into() }))
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
}
