//! A small token issuer for docker-registry's token auth (RS256 JWTs signed
//! via openssl): GET with Basic credentials or anonymously, and the OAuth2
//! refresh-token POST (grant_type=refresh_token) when given a refresh token.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SERVICE: &str = "kiln-test-registry";
pub const ISSUER: &str = "kiln-test-issuer";

/// What the issuer saw: (user, "anonymous", "refresh:CLIENT_ID" or "rejected"; requested scopes).
pub type Requests = Arc<Mutex<Vec<(String, Vec<String>)>>>;

pub struct Issuer {
    pub realm: String,
    pub cert: PathBuf,
    pub requests: Requests,
    _dir: tempfile::TempDir,
}

/// Who the issuer accepts.
#[derive(Clone, Default)]
pub struct Accepts {
    /// Basic user and password (full access); anyone else gets pull only, anonymously.
    pub basic: Option<(String, String)>,
    /// The refresh token the POST flow accepts (full access).
    pub refresh_token: Option<String>,
}

pub fn start_issuer(rt: &tokio::runtime::Handle, accepts: Accepts) -> Issuer {
    let dir = tempfile::tempdir().unwrap();
    super::openssl(dir.path(), &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=kiln token issuer"]);
    super::openssl(dir.path(), &["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"]);
    let der = std::fs::read(dir.path().join("cert.der")).unwrap();
    let key = dir.path().join("key.pem");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let requests: Requests = Arc::default();
    let seen = requests.clone();
    rt.spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (der, key, seen, accepts) = (der.clone(), key.clone(), seen.clone(), accepts.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
                let response = tokio::task::spawn_blocking(move || answer(&head, &body, &accepts, &der, &key, &seen)).await.unwrap();
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Issuer { realm, cert: dir.path().join("cert.pem"), requests, _dir: dir }
}

/// Decodes `application/x-www-form-urlencoded` (and query strings).
pub fn form_decode(s: &str) -> Vec<(String, String)> {
    let decode = |v: &str| {
        let bytes = v.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    s.split('&').filter(|kv| !kv.is_empty()).map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k), decode(v))
    }).collect()
}

const REJECT: &str = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn answer(head: &str, body: &str, accepts: &Accepts, cert_der: &[u8], key: &Path, seen: &Requests) -> String {
    let mut request = head.split_whitespace();
    let method = request.next().unwrap_or("GET");
    let target = request.next().unwrap_or("/");
    let (user, scopes, grant_all) = if method == "POST" {
        let form = form_decode(body);
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let scopes: Vec<String> = field("scope").map(|s| s.split(' ').map(str::to_string).collect()).unwrap_or_default();
        let good = field("grant_type").as_deref() == Some("refresh_token")
            && field("service").as_deref() == Some(SERVICE)
            && field("client_id").is_some_and(|c| !c.is_empty())
            && accepts.refresh_token.is_some()
            && field("refresh_token") == accepts.refresh_token;
        if !good {
            seen.lock().unwrap().push(("rejected".into(), scopes));
            return REJECT.into();
        }
        (format!("refresh:{}", field("client_id").unwrap()), scopes, true)
    } else {
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let scopes: Vec<String> = form_decode(query).into_iter().filter(|(k, _)| k == "scope").map(|(_, v)| v).collect();
        let basic = head
            .lines()
            .find_map(|l| l.strip_prefix("authorization: Basic ").or_else(|| l.strip_prefix("Authorization: Basic ")))
            .map(|b| String::from_utf8(STANDARD.decode(b.trim()).unwrap()).unwrap());
        match basic.as_deref().map(|b| b.split_once(':').unwrap()) {
            Some((u, p)) if accepts.basic.as_ref().is_some_and(|(au, ap)| au == u && ap == p) => (u.to_string(), scopes, true),
            Some(_) => {
                seen.lock().unwrap().push(("rejected".into(), scopes));
                return REJECT.into();
            }
            // Anonymous users may pull anything and push nothing, as on Docker Hub.
            None => ("anonymous".to_string(), scopes, false),
        }
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
    // The OAuth2 (POST) answer names it access_token, the GET flow token.
    let body = if method == "POST" {
        serde_json::json!({"access_token": token, "expires_in": 600, "scope": scopes.join(" ")})
    } else {
        serde_json::json!({"token": token, "expires_in": 600})
    }
    .to_string();
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}
