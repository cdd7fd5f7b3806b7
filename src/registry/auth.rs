//! Credentials: Docker's `config.json` (auths, credsStore, credHelpers),
//! podman's `auth.json` (the same format), credential helpers, and
//! `WWW-Authenticate` challenges.
//!
//! [`Credentials`] never prints its secret: its Debug output is redacted, and
//! no error in this module includes one.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use crate::registry::reference::{DOCKER_HUB, DOCKER_HUB_AUTH_KEY};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Docker config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("credential helper docker-credential-{helper} failed for {registry}: {reason}")]
    Helper { helper: String, registry: String, reason: String },
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ username: {:?}, secret: <redacted> }}", self.username)
    }
}

/// The user name docker's credential helpers (and an `identitytoken` entry)
/// use for an OAuth2 refresh token, as Azure ACR hands out.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credentials {
    /// A refresh token, exchanged at the token server with grant_type=refresh_token.
    pub fn is_identity_token(&self) -> bool {
        self.username == IDENTITY_TOKEN_USER
    }

    pub fn basic_header(&self) -> String {
        format!("Basic {}", B64.encode(format!("{}:{}", self.username, self.secret)))
    }
}

/// The Docker config file: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn default_config_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return PathBuf::from(dir).join("config.json");
    }
    dirs::home_dir().unwrap_or_default().join(".docker").join("config.json")
}

/// The credential files kiln reads, the first with an entry for a registry
/// winning: `$REGISTRY_AUTH_FILE` (set on purpose, so first), docker's config
/// (what `kiln login` and buildx use), then podman's
/// `$XDG_RUNTIME_DIR/containers/auth.json` and
/// `$HOME/.config/containers/auth.json`, in podman's order.
pub fn default_auth_files() -> Vec<PathBuf> {
    auth_files_from(&|name| std::env::var_os(name), dirs::home_dir())
}

fn auth_files_from(var: &dyn Fn(&str) -> Option<std::ffi::OsString>, home: Option<PathBuf>) -> Vec<PathBuf> {
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE").map(PathBuf::from));
    files.push(match var("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => home.clone().unwrap_or_default().join(".docker").join("config.json"),
    });
    files.extend(var("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers").join("auth.json")));
    files.extend(home.map(|h| h.join(".config").join("containers").join("auth.json")));
    files.dedup();
    files
}

/// The file `kiln login` and `logout` change: `$REGISTRY_AUTH_FILE` when set
/// (as podman and skopeo do, so the file read first is the one written),
/// else docker's config.
pub fn login_auth_file() -> PathBuf {
    std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(default_config_path)
}

/// The key a registry's entry has in `auths`.
pub fn auth_key(registry: &str) -> String {
    if registry == DOCKER_HUB { DOCKER_HUB_AUTH_KEY.to_string() } else { registry.to_string() }
}

/// Reads and writes credentials in one Docker config file.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
}

impl DockerConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<Value, AuthError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AuthError::Config { path: self.path.clone(), reason: format!("not valid JSON: {e}") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Object(Default::default())),
            Err(e) => Err(AuthError::Config { path: self.path.clone(), reason: e.to_string() }),
        }
    }

    fn helper_for(config: &Value, registry: &str) -> Option<String> {
        let key = auth_key(registry);
        config
            .get("credHelpers")
            .and_then(|h| h.get(&key).or_else(|| h.get(registry)))
            .or_else(|| config.get("credsStore"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Credentials for `registry` (as written in a reference, e.g. `docker.io`).
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>, AuthError> {
        let config = self.load()?;
        if let Some(helper) = Self::helper_for(&config, registry) {
            if let Some(c) = helper_get(&helper, &auth_key(registry))? {
                return Ok(Some(c));
            }
        }
        let Some(auths) = config.get("auths").and_then(Value::as_object) else { return Ok(None) };
        let key = auth_key(registry);
        let entry = auths.get(&key).or_else(|| {
            // Older clients wrote "https://host" or "https://host/v1/".
            auths.iter().find(|(k, _)| strip_url(k) == registry || (registry == DOCKER_HUB && strip_url(k) == "index.docker.io")).map(|(_, v)| v)
        });
        let Some(entry) = entry else { return Ok(None) };
        let bad = |reason: &str| AuthError::Config { path: self.path.clone(), reason: format!("auths entry for {key}: {reason}") };
        // docker writes the refresh token of an OAuth2 login here; it takes the place of the password.
        if let Some(token) = entry.get("identitytoken").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            return Ok(Some(Credentials { username: IDENTITY_TOKEN_USER.to_string(), secret: token.to_string() }));
        }
        if let Some(auth) = entry.get("auth").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            let decoded = B64.decode(auth.trim()).map_err(|_| bad("\"auth\" is not base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad("\"auth\" is not UTF-8"))?;
            let (u, p) = decoded.split_once(':').ok_or_else(|| bad("\"auth\" is not user:password"))?;
            return Ok(Some(Credentials { username: u.to_string(), secret: p.to_string() }));
        }
        match (entry.get("username").and_then(Value::as_str), entry.get("password").and_then(Value::as_str)) {
            (Some(u), Some(p)) => Ok(Some(Credentials { username: u.to_string(), secret: p.to_string() })),
            _ => Ok(None),
        }
    }

    /// Stores credentials the way `docker login` does: in the configured
    /// credential helper, else base64 in `auths`.
    pub fn store(&self, registry: &str, creds: &Credentials) -> Result<(), AuthError> {
        let _lock = self.lock()?;
        let mut config = self.load()?;
        let key = auth_key(registry);
        if let Some(helper) = Self::helper_for(&config, registry) {
            let input = serde_json::json!({"ServerURL": key, "Username": creds.username, "Secret": creds.secret});
            run_helper(&helper, "store", &key, input.to_string().as_bytes())?;
            // Make sure no stale inline copy survives next to the helper's.
            if let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) {
                auths.insert(key, serde_json::json!({}));
            }
        } else {
            let obj = config.as_object_mut().ok_or_else(|| AuthError::Config { path: self.path.clone(), reason: "top level is not an object".into() })?;
            let auths = obj.entry("auths").or_insert_with(|| Value::Object(Default::default()));
            let auths = auths.as_object_mut().ok_or_else(|| AuthError::Config { path: self.path.clone(), reason: "\"auths\" is not an object".into() })?;
            auths.insert(key, serde_json::json!({"auth": B64.encode(format!("{}:{}", creds.username, creds.secret))}));
        }
        self.save(&config)
    }

    /// Removes stored credentials; false when there were none.
    pub fn erase(&self, registry: &str) -> Result<bool, AuthError> {
        let _lock = self.lock()?;
        let mut config = self.load()?;
        let key = auth_key(registry);
        let mut removed = false;
        if let Some(helper) = Self::helper_for(&config, registry) {
            removed = run_helper(&helper, "erase", &key, key.as_bytes()).is_ok();
        }
        if let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) {
            let keys: Vec<String> = auths.keys().filter(|k| **k == key || strip_url(k) == registry).cloned().collect();
            for k in keys {
                auths.remove(&k);
                removed = true;
            }
        }
        self.save(&config)?;
        Ok(removed)
    }

    /// Holds `<file>.lock` so that two logins (kiln's or another tool's
    /// that honours it) do not lose each other's entries; released on drop.
    fn lock(&self) -> Result<std::fs::File, AuthError> {
        let err = |e: std::io::Error| AuthError::Config { path: self.path.clone(), reason: format!("locking: {e}") };
        let target = self.target();
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(target.with_file_name(name)).map_err(err)?;
        crate::oci::store::lock(&file, crate::oci::store::LockKind::Exclusive).map_err(err)?;
        Ok(file)
    }

    /// The file to write: a symlinked config (dotfile managers do that) is
    /// updated where it points, and the link stays.
    fn target(&self) -> PathBuf {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_symlink()) {
            if let Ok(real) = std::fs::canonicalize(&self.path) {
                return real;
            }
        }
        self.path.clone()
    }

    fn save(&self, config: &Value) -> Result<(), AuthError> {
        let err = |e: std::io::Error| AuthError::Config { path: self.path.clone(), reason: e.to_string() };
        let target = self.target();
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        // NamedTempFile is created 0600, which is what a file of secrets needs.
        tmp.write_all(serde_json::to_string_pretty(config).expect("serialises").as_bytes()).map_err(err)?;
        tmp.write_all(b"\n").map_err(err)?;
        tmp.persist(&target).map_err(|e| err(e.error))?;
        Ok(())
    }
}

fn strip_url(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn run_helper(helper: &str, verb: &str, registry: &str, input: &[u8]) -> Result<Vec<u8>, AuthError> {
    let fail = |reason: String| AuthError::Helper { helper: helper.to_string(), registry: registry.to_string(), reason };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    child.stdin.take().expect("piped").write_all(input).map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        // Helpers print their error on stdout; it never contains the secret.
        let msg = String::from_utf8_lossy(if out.stdout.is_empty() { &out.stderr } else { &out.stdout }).trim().to_string();
        return Err(fail(msg));
    }
    Ok(out.stdout)
}

fn helper_get(helper: &str, server: &str) -> Result<Option<Credentials>, AuthError> {
    match run_helper(helper, "get", server, server.as_bytes()) {
        Ok(out) => {
            #[derive(serde::Deserialize)]
            struct Out {
                #[serde(rename = "Username")]
                username: String,
                #[serde(rename = "Secret")]
                secret: String,
            }
            let o: Out = serde_json::from_slice(&out).map_err(|_| AuthError::Helper {
                helper: helper.to_string(),
                registry: server.to_string(),
                reason: "its output is not the expected JSON".into(),
            })?;
            Ok(Some(Credentials { username: o.username, secret: o.secret }))
        }
        Err(AuthError::Helper { reason, .. }) if reason.to_lowercase().contains("not found") => Ok(None),
        Err(e) => Err(e),
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_files_are_read_in_a_documented_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| std::ffi::OsString::from(v))
        };
        let home = Some(PathBuf::from("/home/u"));
        let all = auth_files_from(
            &env(&[("REGISTRY_AUTH_FILE", "/a/auth.json"), ("DOCKER_CONFIG", "/d"), ("XDG_RUNTIME_DIR", "/run/user/1")]),
            home.clone(),
        );
        let want: Vec<PathBuf> =
            ["/a/auth.json", "/d/config.json", "/run/user/1/containers/auth.json", "/home/u/.config/containers/auth.json"].iter().map(PathBuf::from).collect();
        assert_eq!(all, want);
        let none = auth_files_from(&env(&[("REGISTRY_AUTH_FILE", "")]), home);
        assert_eq!(none, vec![PathBuf::from("/home/u/.docker/config.json"), PathBuf::from("/home/u/.config/containers/auth.json")]);
    }

    #[test]
    fn identity_token_entries_are_refresh_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"acr.example":{"auth":"dTpw","identitytoken":"refresh-123"}}}"#).unwrap();
        let c = DockerConfig::new(&path).get("acr.example").unwrap().unwrap();
        assert!(c.is_identity_token());
        assert_eq!(c.secret, "refresh-123");
    }

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn config_round_trip_keeps_other_fields_and_never_debug_prints_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"other.io":{"auth":"YTpi"}},"psFormat":"x"}"#).unwrap();
        let cfg = DockerConfig::new(&path);
        let creds = Credentials { username: "u".into(), secret: "s3cret".into() };
        cfg.store("docker.io", &creds).unwrap();
        assert_eq!(cfg.get("docker.io").unwrap(), Some(creds.clone()));
        assert_eq!(cfg.get("other.io").unwrap().unwrap().username, "a");
        let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(raw["auths"]["https://index.docker.io/v1/"]["auth"].is_string());
        assert_eq!(raw["psFormat"], "x");
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert!(cfg.erase("docker.io").unwrap());
        assert_eq!(cfg.get("docker.io").unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_config_stays_a_link_and_parallel_logins_keep_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles/docker.json");
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        std::fs::write(&real, "{}").unwrap();
        let link = dir.path().join("config.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let link = &link;
                s.spawn(move || {
                    for i in 0..10 {
                        let creds = Credentials { username: format!("u{t}"), secret: "p".into() };
                        DockerConfig::new(link).store(&format!("r{t}-{i}.example"), &creds).unwrap();
                    }
                });
            }
        });
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is kept");
        let raw: Value = serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
        assert_eq!(raw["auths"].as_object().unwrap().len(), 40, "no login lost another's entry");
    }
}
