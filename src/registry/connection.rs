//! How kiln connects to one registry host: the TLS roots it trusts, the
//! client certificate it shows, whether it verifies at all, and the proxy.
//!
//! Per-host TLS follows docker and podman: for `HOST[:PORT]`, each certs.d
//! directory's `HOST[:PORT]/` may hold `*.crt` (CAs trusted for that host
//! only) and `NAME.cert` + `NAME.key` (a client certificate for mTLS).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::registry::RegistryError;

/// What a host's certs.d directories hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostCerts {
    /// `*.crt` files: CAs trusted for this host.
    pub cas: Vec<PathBuf>,
    /// `NAME.cert` and its `NAME.key`.
    pub identities: Vec<(PathBuf, PathBuf)>,
}

/// The certs.d directories docker and podman read, in their order.
pub fn default_certs_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    #[cfg(unix)]
    {
        dirs.push(PathBuf::from("/etc/docker/certs.d"));
        dirs.push(PathBuf::from("/etc/containers/certs.d"));
    }
    #[cfg(windows)]
    if let Some(program_data) = std::env::var_os("ProgramData") {
        dirs.push(PathBuf::from(program_data).join("docker").join("certs.d"));
    }
    // Rootless podman's and rootless docker's per-user directories (on
    // Windows: below the user's config dir).
    #[cfg(unix)]
    let user = dirs::home_dir().map(|h| h.join(".config"));
    #[cfg(not(unix))]
    let user = dirs::config_dir();
    if let Some(config) = user {
        dirs.push(config.join("containers").join("certs.d"));
        dirs.push(config.join("docker").join("certs.d"));
    }
    dirs
}

/// Reads `HOST[:PORT]/` below each of `dirs`. A missing directory is no
/// error; a client certificate without its key (or a key without its
/// certificate) is.
pub fn host_certs(host_port: &str, dirs: &[PathBuf]) -> Result<HostCerts, RegistryError> {
    let mut found = HostCerts::default();
    // A registry name never holds a path separator; refuse to look outside certs.d for one that does.
    if host_port.is_empty() || host_port.contains(['/', '\\']) || host_port.starts_with('.') {
        return Ok(found);
    }
    // Windows file names cannot hold ':' (it would name a data stream); docker
    // there drops it: certs.d\\HOST5000 (moby's registry cleanPath).
    #[cfg(windows)]
    let name: &str = &host_port.replace(':', "");
    #[cfg(not(windows))]
    let name = host_port;
    for dir in dirs {
        let host_dir = dir.join(name);
        let entries = match std::fs::read_dir(&host_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(e) => return Err(RegistryError::Setup(format!("reading {}: {e}", host_dir.display()))),
        };
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        names.sort();
        for path in &names {
            match path.extension().and_then(|e| e.to_str()) {
                Some("crt") => found.cas.push(path.clone()),
                Some("cert") => {
                    let key = path.with_extension("key");
                    if !key.is_file() {
                        return Err(RegistryError::Setup(format!(
                            "client certificate {} has no key: {} is missing",
                            path.display(),
                            key.display()
                        )));
                    }
                    found.identities.push((path.clone(), key));
                }
                Some("key") => {
                    let cert = path.with_extension("cert");
                    if !cert.is_file() {
                        return Err(RegistryError::Setup(format!(
                            "client key {} has no certificate: {} is missing",
                            path.display(),
                            cert.display()
                        )));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

/// What one host's connection needs besides the defaults.
#[derive(Debug, Default, Clone)]
pub struct HostTls {
    /// `--ca-cert` files and the host's certs.d CAs.
    pub cas: Vec<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
    /// `--insecure-skip-tls-verify` names this host.
    pub skip_verify: bool,
}

/// Whether `host_port` (or its host alone) is in a list of `host[:port]` names.
pub fn listed(list: &[String], host_port: &str) -> bool {
    let host = host_of(host_port);
    list.iter().any(|r| r == host_port || r == host)
}

/// The host of `host[:port]` or `[v6]:port`.
pub fn host_of(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host_port.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((h, _)) if !h.contains(':') => h,
        _ => host_port,
    }
}

pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Resolves everything TLS for `host_port`.
pub fn host_tls(host_port: &str, ca_certs: &[PathBuf], certs_dirs: &[PathBuf], skip_verify: &[String]) -> Result<HostTls, RegistryError> {
    let certs = host_certs(host_port, certs_dirs)?;
    let mut cas = ca_certs.to_vec();
    cas.extend(certs.cas);
    Ok(HostTls { cas, identity: certs.identities.into_iter().next(), skip_verify: listed(skip_verify, host_port) })
}

/// An HTTP client for one host's TLS settings.
pub fn http_client(tls: &HostTls) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::limited(10))
        .no_proxy();
    let proxies = ProxyEnv::from_env()?;
    if proxies.https.is_some() || proxies.http.is_some() {
        builder = builder.proxy(reqwest::Proxy::custom(move |url| proxies.proxy_for(url)));
    }
    for path in &tls.cas {
        for c in read_pem_certs(path)? {
            builder = builder.add_root_certificate(c);
        }
    }
    if let Some((cert, key)) = &tls.identity {
        let read = |p: &Path| std::fs::read(p).map_err(|e| RegistryError::Setup(format!("client certificate {}: {e}", p.display())));
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend(read(key)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| RegistryError::Setup(format!("client certificate {} with key {}: {}", cert.display(), key.display(), super::client::error_chain(&e))))?;
        builder = builder.identity(identity);
    }
    if tls.skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| RegistryError::Setup(super::client::error_chain(&e)))
}

fn read_pem_certs(path: &Path) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let err = |e: String| RegistryError::Setup(format!("CA certificate {}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificates in it".into()));
    }
    Ok(certs)
}

/// The proxy settings of the environment, read the way Go's
/// `http.ProxyFromEnvironment` reads them (docker and buildkit use it):
/// HTTPS_PROXY / HTTP_PROXY (upper or lower case), NO_PROXY, and loopback
/// (localhost, 127.0.0.0/8, ::1) never proxied whatever the variables say.
#[derive(Debug, Clone, Default)]
pub struct ProxyEnv {
    https: Option<reqwest::Url>,
    http: Option<reqwest::Url>,
    no_proxy: Vec<String>,
}

impl ProxyEnv {
    pub fn from_env() -> Result<Self, RegistryError> {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, RegistryError> {
        let get = |name: &str| var(name).or_else(|| var(&name.to_ascii_lowercase())).filter(|v| !v.trim().is_empty());
        let url = |name: &str| -> Result<Option<reqwest::Url>, RegistryError> {
            let Some(raw) = get(name) else { return Ok(None) };
            // Go accepts "host:port" and means http://host:port.
            let with_scheme = if raw.contains("://") { raw.clone() } else { format!("http://{raw}") };
            reqwest::Url::parse(&with_scheme)
                .ok()
                .filter(|u| u.host_str().is_some())
                .map(Some)
                .ok_or_else(|| RegistryError::Setup(format!("{name}={raw:?} is not a proxy URL")))
        };
        let no_proxy = get("NO_PROXY").unwrap_or_default().split(',').map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()).collect();
        Ok(Self { https: url("HTTPS_PROXY")?, http: url("HTTP_PROXY")?, no_proxy })
    }

    /// The proxy for a request to `url`, if any.
    pub fn proxy_for(&self, url: &reqwest::Url) -> Option<reqwest::Url> {
        let proxy = match url.scheme() {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }?;
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if is_loopback(&host) || self.bypassed(&host, url.port_or_known_default()) {
            return None;
        }
        Some(proxy.clone())
    }

    /// NO_PROXY as Go reads it: `*`, IPs, CIDRs, and domains (with or
    /// without a leading `.` or `*.`) matching themselves and subdomains,
    /// each optionally with `:port`.
    fn bypassed(&self, host: &str, port: Option<u16>) -> bool {
        let ip = host.parse::<IpAddr>().ok();
        self.no_proxy.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                return match (ip, net.parse::<IpAddr>(), bits.parse::<u32>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_network(ip, net, bits),
                    _ => false,
                };
            }
            let (name, entry_port) = match entry.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse::<u16>().ok()),
                _ => (entry.as_str(), None),
            };
            if entry_port.is_some_and(|p| Some(p) != port) {
                return false;
            }
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if let (Some(ip), Ok(entry_ip)) = (ip, name.parse::<IpAddr>()) {
                return ip == entry_ip;
            }
            let domain = name.trim_start_matches("*.").trim_start_matches('.');
            !domain.is_empty() && (host == domain || host.ends_with(&format!(".{domain}")))
        })
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Unix layout: Windows names these folders without the colon, which it forbids in names.
    #[cfg(unix)]
    #[test]
    fn certs_d_holds_per_host_cas_and_client_certificates() {
        let root = tempfile::tempdir().unwrap();
        let docker = root.path().join("docker");
        let user = root.path().join("user");
        std::fs::create_dir_all(docker.join("reg.lan:5000")).unwrap();
        std::fs::create_dir_all(user.join("reg.lan:5000")).unwrap();
        std::fs::create_dir_all(user.join("other.lan")).unwrap();
        std::fs::write(docker.join("reg.lan:5000/ca.crt"), "x").unwrap();
        std::fs::write(user.join("reg.lan:5000/client.cert"), "x").unwrap();
        std::fs::write(user.join("reg.lan:5000/client.key"), "x").unwrap();
        std::fs::write(user.join("reg.lan:5000/README"), "x").unwrap();
        std::fs::write(user.join("other.lan/b.crt"), "x").unwrap();
        let dirs = [docker.clone(), user.clone(), root.path().join("missing")];
        let certs = host_certs("reg.lan:5000", &dirs).unwrap();
        assert_eq!(certs.cas, vec![docker.join("reg.lan:5000/ca.crt")]);
        assert_eq!(certs.identities, vec![(user.join("reg.lan:5000/client.cert"), user.join("reg.lan:5000/client.key"))]);
        // Another port or host does not share them.
        assert_eq!(host_certs("reg.lan:5001", &dirs).unwrap(), HostCerts::default());
        assert_eq!(host_certs("other.lan", &dirs).unwrap().cas, vec![user.join("other.lan/b.crt")]);
        assert_eq!(host_certs("../docker/reg.lan:5000", &dirs).unwrap(), HostCerts::default());

        std::fs::remove_file(user.join("reg.lan:5000/client.key")).unwrap();
        let err = host_certs("reg.lan:5000", &dirs).unwrap_err().to_string();
        assert!(err.contains("client.cert has no key") && err.contains("client.key is missing"), "{err}");
    }

    #[test]
    fn loopback_is_never_proxied_and_no_proxy_is_read_as_go_reads_it() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            ProxyEnv::from_vars(&move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
        };
        let env = vars(&[("HTTPS_PROXY", "proxy.corp:3128"), ("http_proxy", "http://127.0.0.1:9"), ("NO_PROXY", "corp.lan, .internal, 10.0.0.0/8, 192.168.1.7, reg.io:5000")]);
        let via = |url: &str| env.proxy_for(&reqwest::Url::parse(url).unwrap()).map(|u| u.to_string());
        for direct in [
            "https://localhost:5000/v2/",
            "https://127.0.0.1:5000/v2/",
            "http://127.8.9.10/v2/",
            "https://[::1]:5000/v2/",
            "https://reg.corp.lan/v2/",
            "https://corp.lan/v2/",
            "https://a.internal/v2/",
            "https://10.1.2.3/v2/",
            "https://192.168.1.7/v2/",
            "https://reg.io:5000/v2/",
        ] {
            assert_eq!(via(direct), None, "{direct} must not be proxied");
        }
        assert_eq!(via("https://registry.example/v2/").as_deref(), Some("http://proxy.corp:3128/"));
        assert_eq!(via("https://notcorp.lan/v2/").as_deref(), Some("http://proxy.corp:3128/"));
        assert_eq!(via("https://reg.io/v2/").as_deref(), Some("http://proxy.corp:3128/"), "the port must match too");
        assert_eq!(via("https://128.0.0.1/v2/").as_deref(), Some("http://proxy.corp:3128/"));
        assert_eq!(via("http://10.0.0.1/v2/"), None);
        assert_eq!(via("http://11.0.0.1/v2/").as_deref(), Some("http://127.0.0.1:9/"));

        let everything = vars(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "*")]);
        assert_eq!(everything.proxy_for(&reqwest::Url::parse("https://docker.io/").unwrap()), None);
        let err = ProxyEnv::from_vars(&|n| (n == "HTTPS_PROXY").then(|| "http://[bad".to_string())).unwrap_err().to_string();
        assert!(err.contains("HTTPS_PROXY"), "{err}");
    }
}
