//! Which Debian mirror to download kernels from: `KILN_DEBIAN_MIRROR`, else the
//! host's apt sources. No mirror host is ever hard-coded.

use std::path::Path;

use super::KernelError;

/// The mirror root for `suite`, e.g. `http://deb.debian.org/debian` (no
/// trailing slash). `explicit` is the user's setting and wins; otherwise the
/// apt sources under `apt_root` (normally `/`) are read.
pub fn choose(explicit: Option<&str>, apt_root: &Path, suite: &str) -> Result<String, KernelError> {
    if let Some(url) = explicit {
        let url = url.trim().trim_end_matches('/');
        if !is_http(url) {
            return Err(KernelError::BadMirror(url.to_string()));
        }
        return Ok(url.to_string());
    }
    let mut entries = Vec::new();
    let dir = apt_root.join("etc/apt/sources.list.d");
    if let Ok(read) = std::fs::read_dir(&dir) {
        let mut files: Vec<_> = read.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            match file.extension().and_then(|e| e.to_str()) {
                Some("sources") => entries.extend(parse_deb822(&text)),
                Some("list") => entries.extend(parse_one_line(&text)),
                _ => {}
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(apt_root.join("etc/apt/sources.list")) {
        entries.extend(parse_one_line(&text));
    }
    pick(&entries, suite).ok_or(KernelError::NoMirror)
}

/// One `deb` source: a mirror root and the suites it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Prefers a source that serves `suite`; else any Debian archive (not the
/// security archive, whose pool holds only security updates).
fn pick(entries: &[AptSource], suite: &str) -> Option<String> {
    let usable = |e: &&AptSource| is_http(&e.uri) && !e.suites.iter().all(|s| s.ends_with("-security") || s.ends_with("/updates"));
    let with_suite = entries.iter().filter(usable).find(|e| e.suites.iter().any(|s| s == suite));
    let any_debian = || entries.iter().filter(usable).find(|e| e.uri.trim_end_matches('/').ends_with("/debian"));
    with_suite.or_else(any_debian).map(|e| e.uri.trim_end_matches('/').to_string())
}

/// Parses deb822 `.sources` stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`).
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n").flat_map(|s| s.split("\r\n\r\n")) {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        let mut current: Option<&mut Vec<String>> = None;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // Continuation of a multi-line field.
                if let Some(values) = current.as_deref_mut() {
                    values.extend(line.split_whitespace().map(str::to_string));
                }
                continue;
            }
            current = None;
            let Some((key, value)) = line.split_once(':') else { continue };
            let values = value.split_whitespace().map(str::to_string);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => {
                    types.extend(values);
                    current = Some(&mut types);
                }
                "uris" => {
                    uris.extend(values);
                    current = Some(&mut uris);
                }
                "suites" => {
                    suites.extend(values);
                    current = Some(&mut suites);
                }
                "enabled" => enabled = !value.trim().eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if enabled && types.iter().any(|t| t == "deb") {
            out.extend(uris.into_iter().map(|uri| AptSource { uri, suites: suites.clone() }));
        }
    }
    out
}

/// Parses one-line `sources.list` entries: `deb [options] URI SUITE COMPONENTS...`.
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ").or_else(|| line.strip_prefix("deb\t")) else { continue };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(AptSource { uri: uri.to_string(), suites: vec![suite.to_string()] });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCES: &str = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn deb822_stanzas() {
        let s = parse_deb822(SOURCES);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].uri, "http://mirror.example/debian");
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://a/debian\nSuites: bookworm\n\nTypes: deb-src\nURIs: http://b/debian\nSuites: bookworm\n";
        assert!(parse_deb822(disabled).is_empty());
    }

    #[test]
    fn one_line_entries_with_options() {
        let s = parse_one_line("# x\ndeb [arch=amd64 signed-by=/k.gpg] https://m.example/debian/ bookworm main\ndeb-src http://x/debian bookworm main\n");
        assert_eq!(s, [AptSource { uri: "https://m.example/debian/".into(), suites: vec!["bookworm".into()] }]);
    }

    #[test]
    fn security_archive_is_never_chosen() {
        let mut s = parse_deb822(SOURCES);
        s.reverse();
        assert_eq!(pick(&s, "bookworm").unwrap(), "http://mirror.example/debian");
        // A trixie host still has a Debian mirror whose pool serves bookworm files.
        let trixie = parse_one_line("deb http://m.example/debian-security trixie-security main\ndeb http://m.example/debian/ trixie main\n");
        assert_eq!(pick(&trixie, "bookworm").unwrap(), "http://m.example/debian");
        // An Ubuntu host has no Debian mirror.
        assert_eq!(pick(&parse_one_line("deb http://archive.ubuntu.com/ubuntu noble main\n"), "bookworm"), None);
    }

    #[test]
    fn reads_apt_root_and_explains_when_nothing_found() {
        let root = tempfile::tempdir().unwrap();
        let err = choose(None, root.path(), "bookworm").unwrap_err().to_string();
        assert!(err.contains("KILN_DEBIAN_MIRROR"), "{err}");
        std::fs::create_dir_all(root.path().join("etc/apt/sources.list.d")).unwrap();
        std::fs::write(root.path().join("etc/apt/sources.list.d/debian.sources"), SOURCES).unwrap();
        assert_eq!(choose(None, root.path(), "bookworm").unwrap(), "http://mirror.example/debian");
        assert_eq!(choose(Some("https://x.example/debian/"), root.path(), "bookworm").unwrap(), "https://x.example/debian");
        assert!(choose(Some("ftp://x/debian"), root.path(), "bookworm").is_err());
    }
}
