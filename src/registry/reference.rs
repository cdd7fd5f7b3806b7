//! Image references (`nginx`, `ghcr.io/o/r:tag`, `host:5000/r@sha256:...`)
//! normalised the way Docker does: no registry means docker.io, and a
//! single-component docker.io name lives under `library/`.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Digest;

pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually answers.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// The key Docker Hub credentials have in `~/.docker/config.json`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host[:port], e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError { input: input.to_string(), reason: reason.to_string() };
        if input.is_empty() || input.len() > 4096 {
            return Err(err("empty or too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (r, Some(crate::oci::digest::parse(d).map_err(|e| err(&e.to_string()))?)),
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(err("a tag is 1-128 characters of letters, digits, '_', '.', '-'"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        if registry.is_empty() || registry.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
            return Err(err("bad registry host"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        for component in repository.split('/') {
            let ok = !component.is_empty()
                && component.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
                && component.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && component.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
            if !ok {
                return Err(err("repository components are lowercase letters, digits and separators (. _ -), not at the ends"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Self { registry, repository, tag, digest })
    }

    /// The host:port to send API requests to.
    pub fn endpoint(&self) -> &str {
        registry_endpoint(&self.registry)
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    pub fn with_digest(&self, digest: Digest) -> Self {
        Self { digest: Some(digest), tag: None, ..self.clone() }
    }
}

/// Finds a local image by the name as given (a full name or a digest), then
/// by its normalised reference (`nginx` = docker.io/library/nginx:latest).
/// Returns the name it was found under.
pub fn resolve_local(store: &crate::oci::Store, name: &str) -> Result<(String, oci_spec::image::Descriptor), crate::oci::StoreError> {
    match store.resolve(name) {
        Ok(d) => Ok((name.to_string(), d)),
        Err(first) => match Reference::parse(name).map(|r| r.to_string()) {
            Ok(full) if full != name => store.resolve(&full).map(|d| (full, d)),
            _ => Err(first),
        },
    }
}

pub fn registry_endpoint(registry: &str) -> &str {
    if registry == DOCKER_HUB { DOCKER_HUB_ENDPOINT } else { registry }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_hub_normalisation() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("index.docker.io/library/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(Reference::parse("nginx").unwrap().endpoint(), "registry-1.docker.io");
    }

    #[test]
    fn other_registries_and_digests() {
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/o/r@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.target(), d);
        assert_eq!(r.endpoint(), "ghcr.io");
        let r = Reference::parse(&format!("ghcr.io/o/r:t@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("t"));
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "UPPER/case", "a//b", "nginx:", "nginx:-x", "nginx@sha256:zz", "a/-b"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }
}
