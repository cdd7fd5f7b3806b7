//! `--build-context name=VALUE` (as buildx): a directory, a git repository
//! or tar archive URL (fetched as a remote build context), an image
//! (`docker-image://REF`) or an OCI layout on disk
//! (`oci-layout://DIR[:TAG|@sha256:...]`) that `FROM name`,
//! `COPY --from=name` and `RUN --mount=from=name` use instead of the image
//! or stage of that name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::remote_context::{self, Fetched, Input, RemoteError};
use crate::oci::layout::LayoutSelector;
use crate::registry::Reference;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, walked like the main context (its own `.dockerignore`).
    Dir(PathBuf),
    /// An image: the local store first, else pulled.
    Image(String),
    /// An image in an OCI layout directory.
    OciLayout { dir: PathBuf, select: LayoutSelector },
    /// A git repository or a tar archive URL, a `Dir` once fetched ([`NamedContexts::fetch_remote`]).
    Remote(String),
}

/// The named contexts of a build, looked up as BuildKit does: by the name
/// as written, or by the same normalised image reference
/// (`alpine` matches a context named `docker.io/library/alpine:latest`).
#[derive(Debug, Clone, Default)]
pub struct NamedContexts(BTreeMap<String, NamedContext>);

impl NamedContexts {
    /// Parses each `--build-context` value; a directory or layout must exist.
    pub fn parse(specs: &[String]) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for spec in specs {
            let (name, value) = parse_one(spec)?;
            if out.insert(name.clone(), value).is_some() {
                return Err(format!("--build-context {spec}: {name:?} is given twice"));
            }
        }
        Ok(NamedContexts(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fetches every remote context into a temp dir (kept in the returned
    /// values for the build) and makes it a directory context.
    pub fn fetch_remote(&mut self, cancel: &std::sync::atomic::AtomicBool) -> Result<Vec<Fetched>, RemoteError> {
        let mut held = Vec::new();
        for (name, context) in self.0.iter_mut() {
            let NamedContext::Remote(url) = context else { continue };
            let fetched = if remote_context::is_git(url) {
                remote_context::git_checkout(url, false, cancel)?
            } else {
                match remote_context::fetch_url(url, cancel)? {
                    Input::Context(fetched) => fetched,
                    Input::Dockerfile(_) => {
                        return Err(RemoteError::Failed(format!("--build-context {name}={url}: not a git repository or a tar archive")))
                    }
                }
            };
            *context = NamedContext::Dir(fetched.root.clone());
            held.push(fetched);
        }
        Ok(held)
    }

    /// The context `name` (a stage name, FROM's image or a `--from` value) refers to.
    pub fn get(&self, name: &str) -> Option<(&str, &NamedContext)> {
        if let Some((k, v)) = self.0.get_key_value(name) {
            return Some((k, v));
        }
        let normal = normalise(name)?;
        self.0.iter().find(|(k, _)| normalise(k).as_deref() == Some(normal.as_str())).map(|(k, v)| (k.as_str(), v))
    }
}

fn normalise(name: &str) -> Option<String> {
    Reference::parse(name).ok().map(|r| r.to_string())
}

fn parse_one(spec: &str) -> Result<(String, NamedContext), String> {
    let bad = |why: &str| format!("--build-context {spec}: {why}");
    let (name, value) =
        spec.split_once('=').ok_or_else(|| bad("expected name=VALUE (a directory, a git or tar URL, docker-image://REF or oci-layout://DIR)"))?;
    let (name, value) = (name.trim(), value.trim());
    if name.is_empty() {
        return Err(bad("the name before = is empty"));
    }
    if value.is_empty() {
        return Err(bad("the value after = is empty"));
    }
    let context = if let Some(reference) = value.strip_prefix("docker-image://") {
        Reference::parse(reference).map_err(|e| bad(&format!("{reference:?} is not an image reference: {e}")))?;
        NamedContext::Image(reference.to_string())
    } else if let Some(rest) = value.strip_prefix("oci-layout://") {
        let (dir, select) = split_layout(rest);
        let dir = PathBuf::from(dir);
        if !dir.join("index.json").is_file() {
            return Err(bad(&format!("{} is not an OCI layout directory (no index.json)", dir.display())));
        }
        NamedContext::OciLayout { dir, select }
    } else if remote_context::is_git(value) || value.starts_with("https://") || value.starts_with("http://") {
        NamedContext::Remote(value.to_string())
    } else if value.contains("://") {
        return Err(bad("unsupported scheme (expected a directory, docker-image:// or oci-layout://)"));
    } else {
        let dir = PathBuf::from(value);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => NamedContext::Dir(dir),
            Ok(_) => return Err(bad(&format!("{value} is not a directory"))),
            Err(e) => return Err(bad(&format!("{value}: {e}"))),
        }
    };
    Ok((name.to_string(), context))
}

/// `DIR@sha256:...`, `DIR:TAG` or `DIR` (a `:` inside the directory's path,
/// before its last `/`, is part of the path).
fn split_layout(rest: &str) -> (&str, LayoutSelector) {
    if let Some((dir, digest)) = rest.rsplit_once('@') {
        return (dir, LayoutSelector::Digest(digest.to_string()));
    }
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last..].rfind(':') {
        Some(i) => (&rest[..last + i], LayoutSelector::Tag(rest[last + i + 1..].to_string())),
        None => (rest, LayoutSelector::Default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Unix paths: a Windows drive letter's colon reads as a layout tag here.
    #[cfg(unix)]
    #[test]
    fn values_parse_like_buildx() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.json"), "{}").unwrap();
        let d = dir.path().display().to_string();
        let c = NamedContexts::parse(&[
            format!("src={d}"),
            "alpine=docker-image://busybox:1.36".into(),
            format!("base=oci-layout://{d}:v1"),
            format!("pinned=oci-layout://{d}@sha256:abc"),
            format!("plain=oci-layout://{d}"),
            "repo=https://h/r.git#v1:sub".into(),
        ])
        .unwrap();
        assert_eq!(c.get("src").unwrap().1, &NamedContext::Dir(dir.path().into()));
        assert_eq!(c.get("alpine").unwrap().1, &NamedContext::Image("busybox:1.36".into()));
        assert_eq!(c.get("docker.io/library/alpine:latest").unwrap().0, "alpine", "matched as a normalised reference");
        assert!(c.get("alpine:3").is_none());
        assert_eq!(c.get("base").unwrap().1, &NamedContext::OciLayout { dir: dir.path().into(), select: LayoutSelector::Tag("v1".into()) });
        assert_eq!(
            c.get("pinned").unwrap().1,
            &NamedContext::OciLayout { dir: dir.path().into(), select: LayoutSelector::Digest("sha256:abc".into()) }
        );
        assert_eq!(c.get("plain").unwrap().1, &NamedContext::OciLayout { dir: dir.path().into(), select: LayoutSelector::Default });
        assert_eq!(c.get("repo").unwrap().1, &NamedContext::Remote("https://h/r.git#v1:sub".into()));
    }

    #[test]
    fn bad_values_name_the_flag_and_the_cause() {
        for (spec, why) in [
            ("novalue", "expected name=VALUE"),
            ("=./x", "name before = is empty"),
            ("a=", "value after = is empty"),
            ("a=/surely/missing/dir", "/surely/missing/dir"),
            ("a=oci-layout:///surely/missing", "not an OCI layout"),
            ("a=ftp://h/x", "unsupported scheme"),
        ] {
            let e = NamedContexts::parse(&[spec.to_string()]).unwrap_err();
            assert!(e.starts_with(&format!("--build-context {spec}: ")) && e.contains(why), "{spec}: {e}");
        }
    }
}
