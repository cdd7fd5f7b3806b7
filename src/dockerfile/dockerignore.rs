//! `.dockerignore`: which context paths a build may not see, with Docker's
//! pattern semantics (moby/patternmatcher): `*` and `?` stay within one path
//! element, `**` spans any number of them, `[...]` classes (Go regexp syntax), `\` escapes,
//! `!` re-includes, a pattern also matches everything below a matched
//! directory, and the last matching pattern decides.

use std::path::{Path, PathBuf};

use super::error::{Error, ErrorKind, Pos};
use super::glob::{Dialect, Glob};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnorePattern {
    /// Cleaned, slash-separated, relative to the context root.
    pub text: String,
    /// `!pattern`: re-include what earlier patterns excluded.
    pub exclusion: bool,
    glob: Glob,
}

/// The patterns of one .dockerignore file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreMatcher {
    pub patterns: Vec<IgnorePattern>,
}

impl IgnoreMatcher {
    /// Parses .dockerignore text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, Error> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut p = line.trim();
            if p.is_empty() {
                continue;
            }
            let exclusion = p.starts_with('!');
            if exclusion {
                p = p[1..].trim();
            }
            let mut cleaned = clean(p);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let glob = Glob::compile(&cleaned, Dialect::Ignore).map_err(|msg| {
                Error::new(ErrorKind::Syntax(msg), Pos { line: n + 1, col: 1 }, line).in_file(file)
            })?;
            patterns.push(IgnorePattern { text: cleaned, exclusion, glob });
        }
        Ok(IgnoreMatcher { patterns })
    }

    /// Reads the ignore file for a build: `<Dockerfile>.dockerignore` next to
    /// the Dockerfile if there is one, else `.dockerignore` at the context
    /// root, else nothing is ignored.
    pub fn load(context: &Path, dockerfile: &Path) -> Result<Self, Error> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(name) = dockerfile.file_name() {
            let mut n = name.to_os_string();
            n.push(".dockerignore");
            candidates.push(dockerfile.with_file_name(n));
        }
        candidates.push(context.join(".dockerignore"));
        for path in candidates {
            match std::fs::read(&path) {
                Ok(bytes) => return Self::parse(&String::from_utf8_lossy(&bytes), &path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::new(ErrorKind::Io(e.to_string()), Pos::default(), "").in_file(path));
                }
            }
        }
        Ok(Self::default())
    }

    /// Whether `path` (relative to the context, `/`-separated) is excluded.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = clean(path.trim_start_matches('/'));
        let parents: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for p in &self.patterns {
            if excluded != p.exclusion {
                continue; // cannot change the outcome
            }
            let mut hit = p.glob.matches(&path);
            // A pattern matching a parent directory covers everything below it.
            for i in 1..parents.len() {
                if hit {
                    break;
                }
                hit = p.glob.matches(&parents[..i].join("/"));
            }
            if hit {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    /// Whether a walker must look inside the excluded directory `dir`
    /// because a `!` pattern might re-include something below it.
    pub fn may_include_below(&self, dir: &str) -> bool {
        let dir = clean(dir.trim_start_matches('/'));
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            // Compare the pattern's literal directory prefix with `dir`.
            let lit: String = p.text.chars().take_while(|c| !matches!(c, '*' | '?' | '[' | '\\')).collect();
            let lit = lit.trim_end_matches('/');
            lit.len() < p.text.len() && dir.starts_with(lit) || lit.starts_with(&format!("{dir}/")) || lit == dir
        })
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
pub fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(src: &str) -> IgnoreMatcher {
        IgnoreMatcher::parse(src, Path::new(".dockerignore")).unwrap()
    }

    #[test]
    fn basic_patterns_and_parents() {
        let ig = m("# comment\nnode_modules\n*.log\n/build/\ndocs/*.md\n");
        assert!(ig.is_excluded("node_modules"));
        assert!(ig.is_excluded("node_modules/x/y.js"), "parent directory matched");
        assert!(ig.is_excluded("a.log"));
        assert!(!ig.is_excluded("dir/a.log"), "* does not cross /");
        assert!(ig.is_excluded("build/out.o"));
        assert!(ig.is_excluded("docs/readme.md"));
        assert!(!ig.is_excluded("docs/sub/readme.md"));
        assert!(!ig.is_excluded("src/main.rs"));
        assert!(!ig.is_excluded("# comment"));
    }

    #[test]
    fn double_star() {
        let ig = m("**/*.tmp\nvendor/**\na/**/z\n");
        assert!(ig.is_excluded("x.tmp"));
        assert!(ig.is_excluded("a/b/c/x.tmp"));
        assert!(ig.is_excluded("vendor/a/b"));
        assert!(ig.is_excluded("a/z"));
        assert!(ig.is_excluded("a/b/c/z"));
        assert!(!ig.is_excluded("ab/z"));
    }

    #[test]
    fn exceptions_last_match_wins() {
        let ig = m("*.md\n!README.md\nREADME-secret.md\n!docs\n");
        assert!(ig.is_excluded("CHANGES.md"));
        assert!(!ig.is_excluded("README.md"));
        assert!(ig.is_excluded("README-secret.md"));
        let ig = m("docs\n!docs/keep.md\n");
        assert!(ig.is_excluded("docs/other.md"));
        assert!(!ig.is_excluded("docs/keep.md"));
        assert!(ig.may_include_below("docs"));
        assert!(!ig.may_include_below("src"));
    }

    #[test]
    fn cleaning_and_classes() {
        let ig = m("  ./a/../b//c/  \n/abs\nfile[0-9].txt\n[^x]y\n[!]z\n\\*lit\n");
        assert_eq!(ig.patterns[0].text, "b/c");
        assert_eq!(ig.patterns[1].text, "abs");
        assert!(ig.is_excluded("b/c/d"));
        assert!(ig.is_excluded("abs"));
        assert!(ig.is_excluded("file7.txt"));
        assert!(!ig.is_excluded("filex.txt"));
        assert!(ig.is_excluded("ay"));
        assert!(!ig.is_excluded("xy"));
        assert!(ig.is_excluded("!z") && !ig.is_excluded("az"));
        assert!(ig.is_excluded("*lit"));
        assert!(!ig.is_excluded("alit"));
    }

    #[test]
    fn huge_patterns_do_not_recurse() {
        let ig = m(&("*".repeat(100_000) + "x\n"));
        assert!(ig.is_excluded("ab/cx"));
        assert!(!ig.is_excluded("abc"));
    }

    #[test]
    fn bad_pattern_reports_line() {
        let e = IgnoreMatcher::parse("ok\nbad[\n", Path::new("ctx/.dockerignore")).unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.to_string().starts_with("ctx/.dockerignore:2:1:"), "{e}");
    }

    #[test]
    fn per_dockerfile_ignore_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "root-only\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/app.Dockerfile.dockerignore"), "specific\n").unwrap();
        let ig = IgnoreMatcher::load(dir.path(), &dir.path().join("sub/app.Dockerfile")).unwrap();
        assert!(ig.is_excluded("specific") && !ig.is_excluded("root-only"));
        let ig = IgnoreMatcher::load(dir.path(), &dir.path().join("Dockerfile")).unwrap();
        assert!(ig.is_excluded("root-only"));
        let empty = tempfile::tempdir().unwrap();
        assert!(IgnoreMatcher::load(empty.path(), &empty.path().join("Dockerfile")).unwrap().patterns.is_empty());
    }
}
