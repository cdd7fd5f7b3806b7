//! The registry transport: scheme choice, TLS roots, authentication and retries.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};

use crate::registry::auth::{self, Challenge, Credentials, DockerConfig};
use crate::registry::connection;
use crate::registry::reference::registry_endpoint;
use crate::registry::transfer::{NoObserver, TransferObserver, UploadMeter};
use crate::registry::RegistryError;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (host or host:port) that may be reached over plain HTTP,
    /// besides localhost and 127.0.0.0/8 which always may.
    pub insecure_registries: Vec<String>,
    /// Extra PEM CA certificates (files may hold several) trusted for TLS
    /// with every registry.
    pub ca_certs: Vec<PathBuf>,
    /// Registries (host or host:port) whose TLS certificate is not verified.
    pub skip_tls_verify: Vec<String>,
    /// Directories with per-registry `HOST[:PORT]/` CAs and client
    /// certificates, as docker's and podman's certs.d.
    pub certs_dirs: Vec<PathBuf>,
    /// Credential files (Docker config.json format), the first with an entry
    /// for a registry wins; empty means anonymous access only.
    pub auth_files: Vec<PathBuf>,
    /// Blob downloads (and uploads) in flight at once.
    pub max_concurrent_transfers: usize,
    /// Attempts per request on 429, 5xx and connection errors.
    pub max_attempts: u32,
    /// First backoff delay; doubled on each retry, at most 8 s.
    pub initial_backoff: Duration,
    /// Blobs larger than this are pushed in chunks of this size (PATCH), smaller ones in one PUT.
    pub chunk_size: u64,
    /// A blob download that receives less than this many bytes in any
    /// `low_speed_window` counts as broken (and is retried): the read
    /// timeout alone never fires on a server that drips a byte at a time.
    pub low_speed_bytes: u64,
    pub low_speed_window: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            ca_certs: Vec::new(),
            skip_tls_verify: Vec::new(),
            certs_dirs: connection::default_certs_dirs(),
            auth_files: auth::default_auth_files(),
            max_concurrent_transfers: 4,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            chunk_size: 64 << 20,
            low_speed_bytes: 16 << 10,
            low_speed_window: Duration::from_secs(60),
        }
    }
}

/// A request body that can be rebuilt for each retry.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Empty,
    Bytes(bytes::Bytes),
    /// `len` bytes of a file from `offset`, counted by `meter` as they are sent.
    File { path: PathBuf, offset: u64, len: u64, meter: Option<UploadMeter> },
}

impl Body {
    async fn build(&self) -> std::io::Result<reqwest::Body> {
        Ok(match self {
            Body::Empty => reqwest::Body::from(bytes::Bytes::new()),
            Body::Bytes(b) => reqwest::Body::from(b.clone()),
            Body::File { path, offset, len, meter } => {
                use futures_util::TryStreamExt;
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(std::io::SeekFrom::Start(*offset)).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f.take(*len), 256 << 10);
                match meter.clone() {
                    Some(meter) => {
                        meter.begin();
                        reqwest::Body::wrap_stream(stream.inspect_ok(move |chunk| meter.sent(chunk.len() as u64)))
                    }
                    None => reqwest::Body::wrap_stream(stream),
                }
            }
        })
    }

    fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// One registry API request, described so it can be sent again.
pub(crate) struct Request<'a> {
    pub registry: &'a str,
    /// Token scopes, e.g. `repository:library/nginx:pull`.
    pub scopes: &'a [String],
    pub method: Method,
    /// A path (`/v2/...`) on the registry or an absolute URL (upload locations).
    pub target: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Describes the operation in errors, e.g. "pulling 127.0.0.1:5000/a:1".
    pub what: &'a str,
}

pub struct Client {
    /// One HTTP client per host[:port]: TLS roots, client certificates and verification are per host.
    http: Mutex<HashMap<String, reqwest::Client>>,
    opts: ClientOptions,
    configs: Vec<DockerConfig>,
    schemes: Mutex<HashMap<String, &'static str>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), String>>,
    creds: Mutex<HashMap<String, Option<Credentials>>>,
    /// Told as blob bytes move (see [`Client::with_observer`]).
    observer: Arc<dyn TransferObserver>,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Self> {
        // Bad --ca-cert files and proxy variables are reported now, not at the first request.
        connection::http_client(&connection::HostTls { cas: opts.ca_certs.clone(), ..Default::default() })?;
        let configs = opts.auth_files.iter().map(DockerConfig::new).collect();
        Ok(Self {
            http: Mutex::default(),
            opts,
            configs,
            schemes: Mutex::default(),
            challenges: Mutex::default(),
            tokens: Mutex::default(),
            creds: Mutex::default(),
            observer: Arc::new(NoObserver),
        })
    }

    /// This client, reporting the bytes of every blob it pulls or pushes to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn TransferObserver>) -> Self {
        self.observer = observer;
        self
    }

    pub(crate) fn observer(&self) -> &Arc<dyn TransferObserver> {
        &self.observer
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Whether plain HTTP may be used for this registry.
    pub fn allows_http(&self, registry: &str) -> bool {
        connection::is_loopback(connection::host_of(registry)) || connection::listed(&self.opts.insecure_registries, registry)
    }

    /// The HTTP client for `host_port`, with that host's TLS settings.
    fn http(&self, host_port: &str) -> Result<reqwest::Client> {
        if let Some(c) = self.http.lock().unwrap().get(host_port) {
            return Ok(c.clone());
        }
        let tls = connection::host_tls(host_port, &self.opts.ca_certs, &self.opts.certs_dirs, &self.opts.skip_tls_verify)?;
        let client = connection::http_client(&tls)?;
        self.http.lock().unwrap().insert(host_port.to_string(), client.clone());
        Ok(client)
    }

    fn http_for_url(&self, url: &Url) -> Result<reqwest::Client> {
        self.http(&host_port(url))
    }

    fn credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(c) = self.creds.lock().unwrap().get(registry) {
            return Ok(c.clone());
        }
        let mut found = None;
        for cfg in &self.configs {
            found = cfg.get(registry)?;
            if found.is_some() {
                break;
            }
        }
        self.creds.lock().unwrap().insert(registry.to_string(), found.clone());
        Ok(found)
    }

    /// `https://host` or, where allowed and HTTPS is not served, `http://host`.
    pub(crate) async fn base_url(&self, registry: &str) -> Result<String> {
        if let Some(s) = self.schemes.lock().unwrap().get(registry) {
            return Ok(format!("{s}://{}", registry_endpoint(registry)));
        }
        let endpoint = registry_endpoint(registry);
        let http = self.http(endpoint)?;
        let mut probe = http.get(format!("https://{endpoint}/v2/"));
        if self.allows_http(registry) {
            // A plain-HTTP server may sit silently on a TLS handshake; a TLS
            // server on loopback or the LAN answers in milliseconds.
            probe = probe.timeout(Duration::from_secs(3));
        }
        let https_err = match probe.send().await {
            Ok(_) => {
                self.schemes.lock().unwrap().insert(registry.to_string(), "https");
                return Ok(format!("https://{endpoint}"));
            }
            Err(e) => e,
        };
        let mut detail = error_chain(&https_err);
        if detail.to_lowercase().contains("certificate") {
            detail.push_str(&format!(
                " (trust its CA with --ca-cert or a {endpoint}/ca.crt in a certs.d directory: {}; or skip verification with --insecure-skip-tls-verify {registry})",
                self.opts.certs_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        if !self.allows_http(registry) {
            return Err(RegistryError::Unreachable { registry: registry.to_string(), detail });
        }
        // Only a registry-looking answer counts: a TLS server answering
        // plain HTTP with 400 must not be mistaken for an HTTP registry.
        match http.get(format!("http://{endpoint}/v2/")).send().await {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::UNAUTHORIZED => {
                self.schemes.lock().unwrap().insert(registry.to_string(), "http");
                Ok(format!("http://{endpoint}"))
            }
            _ => Err(RegistryError::Unreachable { registry: registry.to_string(), detail }),
        }
    }

    /// Sends a request, authenticating on 401 and retrying on 429, 5xx and
    /// connection errors. The response may still be an error status; see [`check`].
    pub(crate) async fn send(&self, req: &Request<'_>) -> Result<Response> {
        let url = if req.target.starts_with("http://") || req.target.starts_with("https://") {
            Url::parse(req.target)
        } else {
            Url::parse(&format!("{}{}", self.base_url(req.registry).await?, req.target))
        }
        .map_err(|e| RegistryError::Protocol { what: req.what.to_string(), detail: format!("bad URL {}: {e}", req.target) })?;
        // Credentials go only to the registry itself, never to another host
        // an upload Location points at.
        let own_host = host_port(&url) == registry_endpoint(req.registry)
            || (url.port().is_none() && url.host_str() == Some(registry_endpoint(req.registry)));
        let mut attempt = 0;
        let mut authenticated_after_challenge = false;
        loop {
            let mut headers = HeaderMap::new();
            for (k, v) in &req.headers {
                headers.insert(*k, HeaderValue::from_str(v).map_err(|e| RegistryError::Protocol { what: req.what.to_string(), detail: e.to_string() })?);
            }
            if own_host {
                if let Some(auth) = self.authorization(req.registry, req.scopes).await? {
                    headers.insert(AUTHORIZATION, auth);
                }
            }
            let body = req.body.build().await.map_err(|e| RegistryError::Protocol { what: req.what.to_string(), detail: e.to_string() })?;
            let mut builder = self.http_for_url(&url)?.request(req.method.clone(), url.clone()).headers(headers);
            if !matches!(req.body, Body::Empty) || req.method == Method::PUT || req.method == Method::PATCH || req.method == Method::POST {
                builder = builder.header(reqwest::header::CONTENT_LENGTH, req.body.len()).body(body);
            }
            let result = builder.send().await;
            let retry_in = match &result {
                Err(e) if is_retryable(e) => Some(self.backoff(attempt, None)),
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() => {
                    Some(self.backoff(attempt, r.headers().get(RETRY_AFTER)))
                }
                _ => None,
            };
            if let Some(delay) = retry_in {
                if attempt + 1 < self.opts.max_attempts {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            let resp = result.map_err(|source| RegistryError::Transport { what: req.what.to_string(), source })?;
            if resp.status() == StatusCode::UNAUTHORIZED && own_host && !authenticated_after_challenge {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(auth::parse_challenge);
                if let Some(c) = challenge {
                    // A cached token may have expired (Docker Hub's last 5 minutes).
                    self.tokens.lock().unwrap().remove(&(req.registry.to_string(), req.scopes.join(" ")));
                    self.challenges.lock().unwrap().insert(req.registry.to_string(), c);
                    authenticated_after_challenge = true;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    fn backoff(&self, attempt: u32, retry_after: Option<&HeaderValue>) -> Duration {
        let exp = self.opts.initial_backoff.saturating_mul(1 << attempt.min(10)).min(Duration::from_secs(8));
        let server = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(30)));
        server.map_or(exp, |s| s.max(exp))
    }

    /// The Authorization header for a request, from what the registry's
    /// challenge asked for: Basic credentials or a Bearer token for `scopes`.
    async fn authorization(&self, registry: &str, scopes: &[String]) -> Result<Option<HeaderValue>> {
        let challenge = self.challenges.lock().unwrap().get(registry).cloned();
        let value = match challenge {
            None => return Ok(None),
            Some(Challenge::Basic) => match self.credentials(registry)? {
                Some(c) => c.basic_header(),
                None => return Ok(None),
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                let key = (registry.to_string(), scopes.join(" "));
                let cached = self.tokens.lock().unwrap().get(&key).cloned();
                let token = match cached {
                    Some(t) => t,
                    None => {
                        let creds = self.credentials(registry)?;
                        let t = self.fetch_token(registry, &realm, service.as_deref(), scopes, creds.as_ref()).await?;
                        self.tokens.lock().unwrap().insert(key, t.clone());
                        t
                    }
                };
                format!("Bearer {token}")
            }
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| RegistryError::Protocol {
            what: format!("authenticating to {registry}"),
            detail: "credentials contain characters not allowed in a header".into(),
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    /// Runs the token flow: GET realm?service=..&scope=.., with Basic
    /// credentials when we have them, anonymously otherwise; or, for an
    /// identity (refresh) token, the OAuth2 POST the distribution token spec
    /// describes (grant_type=refresh_token), as docker does.
    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        creds: Option<&Credentials>,
    ) -> Result<String> {
        let what = format!("getting a token for {registry}");
        let realm_url = Url::parse(realm).map_err(|e| RegistryError::Protocol { what: what.clone(), detail: format!("bad token realm {realm:?}: {e}") })?;
        if realm_url.scheme() != "https" && !(realm_url.scheme() == "http" && self.allows_http(&host_port(&realm_url))) {
            return Err(RegistryError::Protocol { what, detail: format!("refusing to send credentials to non-HTTPS token realm {realm}") });
        }
        let http = self.http_for_url(&realm_url)?;
        let identity_token = creds.filter(|c| c.is_identity_token());
        let mut url = realm_url.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let mut attempt = 0;
        loop {
            let mut rb = http.get(url.clone());
            if let Some(token) = identity_token {
                let scope = scopes.join(" ");
                let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", token.secret.as_str()), ("client_id", "kiln")];
                form.extend(service.map(|s| ("service", s)));
                if !scope.is_empty() {
                    form.push(("scope", scope.as_str()));
                }
                rb = http.post(realm_url.clone()).form(&form);
            } else if let Some(c) = creds {
                let mut v = HeaderValue::from_str(&c.basic_header()).map_err(|_| RegistryError::Protocol {
                    what: what.clone(),
                    detail: "credentials contain characters not allowed in a header".into(),
                })?;
                v.set_sensitive(true);
                rb = rb.header(AUTHORIZATION, v);
            }
            let resp = match rb.send().await {
                Err(e) if is_retryable(&e) && attempt + 1 < self.opts.max_attempts => {
                    tokio::time::sleep(self.backoff(attempt, None)).await;
                    attempt += 1;
                    continue;
                }
                r => r.map_err(|source| RegistryError::Transport { what: what.clone(), source })?,
            };
            let status = resp.status();
            if (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) && attempt + 1 < self.opts.max_attempts {
                tokio::time::sleep(self.backoff(attempt, resp.headers().get(RETRY_AFTER))).await;
                attempt += 1;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    repository: None,
                    detail: if identity_token.is_some() {
                        format!("the token server rejected the stored identity token ({status}); log in again with `kiln login {registry}`")
                    } else if creds.is_some() {
                        format!("the token server rejected the stored credentials ({status})")
                    } else {
                        format!("the token server refused anonymous access ({status}); log in with `kiln login {registry}`")
                    },
                });
            }
            if !status.is_success() {
                return Err(RegistryError::Status { what, status, message: String::new() });
            }
            #[derive(serde::Deserialize)]
            struct TokenResponse {
                token: Option<String>,
                access_token: Option<String>,
            }
            let bytes = body_up_to(resp, MAX_SMALL_BODY)
                .await
                .map_err(|source| RegistryError::Transport { what: what.clone(), source })?
                .ok_or_else(|| RegistryError::Protocol { what: what.clone(), detail: "token response is over 1 MiB".into() })?;
            let body: TokenResponse = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Protocol { what: what.clone(), detail: format!("token response is not JSON: {e}") })?;
            return body
                .token
                .or(body.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| RegistryError::Protocol { what, detail: "token response has no token".into() });
        }
    }

    /// Checks credentials against a registry the way `docker login` does.
    pub async fn check_credentials(&self, registry: &str, creds: &Credentials) -> Result<()> {
        let base = self.base_url(registry).await?;
        let what = format!("logging in to {registry}");
        let http = self.http(registry_endpoint(registry))?;
        let probe = http
            .get(format!("{base}/v2/"))
            .send()
            .await
            .map_err(|source| RegistryError::Transport { what: what.clone(), source })?;
        if probe.status().is_success() {
            return Ok(());
        }
        let challenge = probe.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).and_then(auth::parse_challenge);
        match challenge {
            Some(Challenge::Bearer { realm, service, .. }) => {
                self.fetch_token(registry, &realm, service.as_deref(), &[], Some(creds)).await.map(|_| ())
            }
            Some(Challenge::Basic) => {
                let mut v = HeaderValue::from_str(&creds.basic_header())
                    .map_err(|_| RegistryError::Protocol { what: what.clone(), detail: "credentials contain characters not allowed in a header".into() })?;
                v.set_sensitive(true);
                let r = http
                    .get(format!("{base}/v2/"))
                    .header(AUTHORIZATION, v)
                    .send()
                    .await
                    .map_err(|source| RegistryError::Transport { what: what.clone(), source })?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(RegistryError::Unauthorized {
                        registry: registry.to_string(),
                        repository: None,
                        detail: format!("the registry rejected the username or password ({})", r.status()),
                    })
                }
            }
            None => Err(RegistryError::Status { what, status: probe.status(), message: String::new() }),
        }
    }

    /// Forgets cached tokens and credentials (after `login`).
    pub fn clear_auth_cache(&self) {
        self.tokens.lock().unwrap().clear();
        self.creds.lock().unwrap().clear();
    }

    pub(crate) fn has_credentials(&self, registry: &str) -> bool {
        self.credentials(registry).ok().flatten().is_some()
    }
}

/// Turns an error status into a typed error; `ok` lists accepted statuses.
pub(crate) async fn check(client: &Client, resp: Response, ok: &[StatusCode], what: &str, registry: &str, repository: &str) -> Result<Response> {
    let status = resp.status();
    if ok.contains(&status) {
        return Ok(resp);
    }
    let message = registry_message(resp).await;
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
            registry: registry.to_string(),
            repository: Some(repository.to_string()),
            detail: if client.has_credentials(registry) {
                format!("access denied with the stored credentials ({status}{})", if message.is_empty() { String::new() } else { format!(": {message}") })
            } else {
                format!("access denied ({status}); log in with `kiln login {registry}`")
            },
        },
        StatusCode::NOT_FOUND => RegistryError::NotFound { what: what.to_string(), message },
        _ => RegistryError::Status { what: what.to_string(), status, message },
    })
}

/// The longest error body and token response kiln reads; the rest is ignored.
const MAX_SMALL_BODY: usize = 1 << 20;

/// Reads at most `limit` bytes of `resp`'s body, chunk by chunk, so a
/// server cannot make kiln buffer more than that. `Ok(None)` means the body
/// is longer than `limit` (reading stops there).
pub(crate) async fn body_up_to(mut resp: Response, limit: usize) -> std::result::Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The `errors[].message` of a registry error body, shortened.
async fn registry_message(resp: Response) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    // A body over the limit is not JSON we can use; its first bytes still say something.
    let bytes = match body_up_to(resp, MAX_SMALL_BODY).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return "(an error body over 1 MiB, not read)".to_string(),
        Err(_) => Vec::new(),
    };
    if let Ok(e) = serde_json::from_slice::<Errors>(&bytes) {
        return e
            .errors
            .iter()
            .map(|e| [e.code.as_deref(), e.message.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(": "))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(&bytes);
    text.chars().take(200).collect::<String>().trim().to_string()
}

pub(crate) fn is_retryable(e: &reqwest::Error) -> bool {
    // A connection that breaks mid-body surfaces as a decode error.
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()
}

/// An error and its causes on one line (reqwest hides the useful part in `source`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// Appends `key=value` to a URL that may already have a query (upload locations do).
pub(crate) fn with_query(url: &str, key: &str, value: &str) -> Result<String> {
    let mut u = Url::parse(url).map_err(|e| RegistryError::Protocol { what: "upload".into(), detail: format!("bad upload location {url}: {e}") })?;
    u.query_pairs_mut().append_pair(key, value);
    Ok(u.into())
}

/// Resolves a `Location` header against the registry base URL.
pub(crate) fn resolve_location(base: &str, resp: &Response, what: &str) -> Result<String> {
    let loc = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::Protocol { what: what.to_string(), detail: "registry sent no Location for the upload".into() })?;
    let base = Url::parse(base).map_err(|e| RegistryError::Protocol { what: what.to_string(), detail: e.to_string() })?;
    base.join(loc)
        .map(String::from)
        .map_err(|e| RegistryError::Protocol { what: what.to_string(), detail: format!("bad Location {loc}: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let c = Client::new(ClientOptions { insecure_registries: vec!["reg.lan:5000".into()], auth_files: Vec::new(), ..Default::default() }).unwrap();
        assert!(c.allows_http("localhost:5000"));
        assert!(c.allows_http("127.0.0.1:5000"));
        assert!(c.allows_http("127.4.5.6"));
        assert!(c.allows_http("[::1]:5000"));
        assert!(c.allows_http("reg.lan:5000"));
        assert!(!c.allows_http("reg.lan:5001"));
        assert!(!c.allows_http("docker.io"));
        assert!(!c.allows_http("128.0.0.1:5000"));
    }

    #[test]
    fn upload_location_query_is_extended() {
        let u = with_query("http://h/v2/a/blobs/uploads/x?_state=abc", "digest", "sha256:00").unwrap();
        assert_eq!(u, "http://h/v2/a/blobs/uploads/x?_state=abc&digest=sha256%3A00");
    }
}
