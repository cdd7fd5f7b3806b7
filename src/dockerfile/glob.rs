//! The one glob tokeniser and matcher behind every wildcard kiln reads, in
//! three [`Dialect`]s: Go's `filepath.Match` (COPY/ADD sources), moby's
//! patternmatcher (.dockerignore, `--exclude`) and the shell patterns of
//! `${VAR#...}`, `${VAR%...}` and `${VAR/.../...}`.

/// Which wildcard rules a pattern follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Go's `filepath.Match`, for one path element: `*`, `?`, `[...]` /
    /// `[^...]` classes with ranges and `\` escapes; a malformed class or a
    /// trailing `\` is an error. Wildcards never match `/`.
    Path,
    /// Docker's .dockerignore (moby/patternmatcher): [`Dialect::Path`]'s
    /// wildcards plus `**` (any number of path elements); classes follow Go
    /// regexp syntax (a leading `]` and a `-` before `]` are literal, only an
    /// unterminated class is an error) and a trailing `\` is literal.
    Ignore,
    /// BuildKit's shell-lexer patterns: `*` and `?`; `\*`, `\?` and `\\` are
    /// literal, `\}` and `\/` (escaped only for the `${}` syntax) drop the
    /// backslash, other escapes are errors; `[` is literal. Like Go's regexp
    /// `.`, wildcards never match a newline.
    Shell,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: one character other than the dialect's stop character.
    One,
    /// `*`: any run of characters other than the stop character.
    Star,
    /// `**/` or a `**` in the middle: any number of whole path elements.
    AnyDirs,
    /// A trailing `**`: anything at all.
    AnyRest,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    toks: Vec<Tok>,
    dialect: Dialect,
}

/// Whether `s` has an unescaped `*`, `?` or `[` (Go's `filepath.Match` rules).
pub fn has_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Go's `filepath.Match` on the whole of `name`. A malformed pattern matches
/// nothing (BuildKit ignores Go's ErrBadPattern here).
pub fn path_match(pattern: &str, name: &str) -> bool {
    Glob::compile(pattern, Dialect::Path).is_ok_and(|g| g.matches(name))
}

const ESCAPE_IN_CLASS: &str = "pattern ends inside an escape in [...]";

impl Glob {
    /// Tokenises `src` by `dialect`'s rules.
    pub fn compile(src: &str, dialect: Dialect) -> Result<Glob, String> {
        let chars: Vec<char> = src.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            let tok = match c {
                '*' if dialect == Dialect::Ignore && chars.get(i) == Some(&'*') => {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i >= chars.len() { Tok::AnyRest } else { Tok::AnyDirs }
                }
                '*' if dialect == Dialect::Path && toks.last() == Some(&Tok::Star) => continue,
                '*' => Tok::Star,
                '?' => Tok::One,
                '\\' => match (dialect, chars.get(i)) {
                    (Dialect::Shell, Some('}' | '/')) => continue,
                    (Dialect::Shell, Some(&e @ ('*' | '?' | '\\'))) | (Dialect::Path | Dialect::Ignore, Some(&e)) => {
                        i += 1;
                        Tok::Lit(e)
                    }
                    (Dialect::Ignore, None) => Tok::Lit('\\'),
                    (Dialect::Path, None) => return Err(format!("syntax error in pattern {src:?}: trailing \\")),
                    (Dialect::Shell, other) => {
                        let shown = other.map(|c| c.to_string()).unwrap_or_default();
                        return Err(format!("invalid pattern ({src}) in substitution: invalid escape '\\{shown}'"));
                    }
                },
                '[' if dialect != Dialect::Shell => {
                    let (tok, next) = class(&chars, i, dialect == Dialect::Path, src)?;
                    i = next;
                    tok
                }
                c => Tok::Lit(c),
            };
            toks.push(tok);
        }
        Ok(Glob { toks, dialect })
    }

    /// The character no wildcard matches.
    fn stop(&self) -> char {
        if self.dialect == Dialect::Shell { '\n' } else { '/' }
    }

    /// Whether `tok`, reading `c`, may stay where it is and may advance.
    #[inline]
    fn moves(&self, tok: &Tok, c: char) -> (bool, bool) {
        match tok {
            Tok::Lit(l) => (false, *l == c),
            Tok::One => (false, c != self.stop()),
            Tok::Class { negated, ranges } => (false, ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated),
            Tok::Star => (c != self.stop(), false),
            Tok::AnyRest => (true, false),
            Tok::AnyDirs => (true, c == '/'),
        }
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        match self.dialect {
            Dialect::Path => self.backtrack(text),
            Dialect::Ignore | Dialect::Shell => self.automaton(text),
        }
    }

    /// Go's `filepath.Match` order: greedy, backtracking to the last star
    /// only (which cannot grow over `/`); linear for one star, O(n*m) at worst.
    fn backtrack(&self, name: &str) -> bool {
        let toks = &self.toks;
        let name: Vec<char> = name.chars().collect();
        let (mut t, mut n) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            if t < toks.len() {
                if toks[t] == Tok::Star {
                    star = Some((t, n));
                    t += 1;
                    continue;
                }
                if self.moves(&toks[t], name[n]).1 {
                    t += 1;
                    n += 1;
                    continue;
                }
            }
            match star {
                Some((st, sn)) if name[sn] != self.stop() => {
                    star = Some((st, sn + 1));
                    t = st + 1;
                    n = sn + 1;
                }
                _ => return false,
            }
        }
        toks[t..].iter().all(|t| *t == Tok::Star)
    }

    /// Whole-string match by simulating the pattern as an automaton: linear
    /// in the text for each pattern position, with no recursion.
    fn automaton(&self, text: &str) -> bool {
        let mut set = self.start();
        for c in text.chars() {
            set = self.step(&set, c);
            if !set.iter().any(|b| *b) {
                return false;
            }
        }
        set[self.toks.len()]
    }

    /// The positions reachable before any input.
    fn start(&self) -> Vec<bool> {
        let mut set = vec![false; self.toks.len() + 1];
        set[0] = true;
        self.close(&mut set);
        set
    }

    /// Adds the positions reachable without input: past `*`, `**` and a trailing `**`.
    fn close(&self, set: &mut [bool]) {
        for (i, tok) in self.toks.iter().enumerate() {
            if set[i] && skippable(tok) {
                set[i + 1] = true;
            }
        }
    }

    fn step(&self, set: &[bool], c: char) -> Vec<bool> {
        let mut next = vec![false; set.len()];
        for (i, tok) in self.toks.iter().enumerate() {
            if !set[i] {
                continue;
            }
            let (stay, advance) = self.moves(tok, c);
            next[i] |= stay;
            next[i + 1] |= advance;
        }
        self.close(&mut next);
        next
    }

    /// Ends `e` such that `text[start..e]` matches the whole pattern, ascending.
    fn match_ends(&self, text: &[char], start: usize) -> Vec<usize> {
        let n = self.toks.len();
        let mut set = self.start();
        let mut ends = Vec::new();
        let mut pos = start;
        loop {
            if set[n] {
                ends.push(pos);
            }
            if pos == text.len() || !set.iter().any(|b| *b) {
                return ends;
            }
            set = self.step(&set, text[pos]);
            pos += 1;
        }
    }

    /// End of the shortest (or longest) prefix of `text` the pattern matches.
    pub fn prefix_match(&self, text: &[char], longest: bool) -> Option<usize> {
        let ends = self.match_ends(text, 0);
        if longest { ends.last().copied() } else { ends.first().copied() }
    }

    /// Start of the shortest (or longest) suffix of `text` the pattern
    /// matches: a prefix match of the reversed pattern on the reversed text.
    pub fn suffix_match(&self, text: &[char], longest: bool) -> Option<usize> {
        let reversed = Glob { toks: self.toks.iter().rev().cloned().collect(), dialect: self.dialect };
        let rtext: Vec<char> = text.iter().rev().copied().collect();
        reversed.prefix_match(&rtext, longest).map(|len| text.len() - len)
    }

    /// Leftmost match at or after `from`, longest at that start, in one pass:
    /// each pattern position remembers the earliest start that reaches it.
    pub fn find(&self, text: &[char], from: usize) -> Option<(usize, usize)> {
        let n = self.toks.len();
        let mut cur: Vec<Option<usize>> = vec![None; n + 1];
        let mut best: Option<(usize, usize)> = None;
        let mut pos = from;
        loop {
            if best.is_none() && cur[0].is_none() {
                cur[0] = Some(pos);
            }
            for (i, tok) in self.toks.iter().enumerate() {
                if let (true, Some(s)) = (skippable(tok), cur[i]) {
                    cur[i + 1] = Some(cur[i + 1].map_or(s, |t| t.min(s)));
                }
            }
            if let Some(s) = cur[n] {
                if best.is_none_or(|(bs, _)| s <= bs) {
                    best = Some((s, pos));
                }
            }
            if let Some((bs, _)) = best {
                cur.iter_mut().filter(|c| c.is_some_and(|s| s > bs)).for_each(|c| *c = None);
                if cur.iter().all(Option::is_none) {
                    return best;
                }
            }
            if pos == text.len() {
                return best;
            }
            let c = text[pos];
            let mut next: Vec<Option<usize>> = vec![None; n + 1];
            let mut put = |i: usize, s: usize| next[i] = Some(next[i].map_or(s, |t: usize| t.min(s)));
            for (i, tok) in self.toks.iter().enumerate() {
                let Some(s) = cur[i] else { continue };
                let (stay, advance) = self.moves(tok, c);
                if stay {
                    put(i, s);
                }
                if advance {
                    put(i + 1, s);
                }
            }
            cur = next;
            pos += 1;
        }
    }
}

/// Whether a position may be passed without reading anything.
fn skippable(tok: &Tok) -> bool {
    matches!(tok, Tok::Star | Tok::AnyDirs | Tok::AnyRest)
}

/// A `[...]` class starting at `chars[i]` (just after the `[`), and the
/// index after its `]`. `strict` is Go's `filepath.Match`: a leading `]` or
/// `-`, a range ending in `]` or `-`, or a reversed range is an error.
fn class(chars: &[char], mut i: usize, strict: bool, src: &str) -> Result<(Tok, usize), String> {
    let bad = || format!("syntax error in pattern {src:?}: bad character class");
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        let Some(&first) = chars.get(i) else {
            return Err(format!("syntax error in pattern {src:?}: unterminated character class, expected ']'"));
        };
        i += 1;
        if first == ']' && !ranges.is_empty() {
            return Ok((Tok::Class { negated, ranges }, i));
        }
        if strict && (first == '-' || first == ']') {
            return Err(bad());
        }
        let mut lo = first;
        if lo == '\\' {
            lo = *chars.get(i).ok_or(ESCAPE_IN_CLASS)?;
            i += 1;
        }
        let mut hi = lo;
        if chars.get(i) == Some(&'-') && (strict || chars.get(i + 1).is_some_and(|c| *c != ']')) {
            hi = *chars.get(i + 1).ok_or_else(bad)?;
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i).ok_or(ESCAPE_IN_CLASS)?;
                i += 1;
            }
            if strict && (hi == ']' || hi == '-' || hi < lo) {
                return Err(bad());
            }
        }
        ranges.push((lo, hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match_semantics() {
        let matches = path_match;
        assert!(matches("*.txt", "a.txt") && matches("*.txt", ".txt"));
        assert!(!matches("*.txt", "a.txt.bak"));
        assert!(matches("a?c", "abc") && !matches("a?c", "ac"));
        assert!(matches("[a-c]x", "bx") && !matches("[a-c]x", "dx"));
        assert!(matches("[^a-c]x", "dx") && !matches("[^a-c]x", "ax"));
        assert!(matches("\\*", "*") && !matches("\\*", "a"));
        assert!(matches("*a*b*", "xxaxxbxx"));
        assert!(!matches("[", "[") && !matches("[]", "]"), "bad patterns match nothing");
        assert!(!matches("*", "a/b"));
        assert!(has_wildcards("a*") && has_wildcards("[ab]") && !has_wildcards("a\\*b") && !has_wildcards("plain"));
    }

    #[test]
    fn dialects_differ_where_their_sources_do() {
        let ok = |src: &str, d: Dialect| Glob::compile(src, d).is_ok();
        // A trailing backslash: an error for Go, literal for .dockerignore, an error for the shell.
        assert!(!ok("a\\", Dialect::Path) && ok("a\\", Dialect::Ignore) && !ok("a\\", Dialect::Shell));
        // `[]a]`: Go rejects a leading `]`, Go's regexp takes it literally, the shell has no classes.
        assert!(!ok("[]a]", Dialect::Path));
        assert!(Glob::compile("[]a]", Dialect::Ignore).unwrap().matches("]"));
        assert!(Glob::compile("[]a]", Dialect::Shell).unwrap().matches("[]a]"));
        // `**` spans directories only in .dockerignore.
        assert!(Glob::compile("a/**", Dialect::Ignore).unwrap().matches("a/b/c"));
        assert!(!path_match("a/**", "a/b/c"));
        // The shell's wildcards stop at newlines, not slashes.
        let sh = Glob::compile("a*", Dialect::Shell).unwrap();
        assert!(sh.matches("a/b") && !sh.matches("a\nb"));
        assert!(Glob::compile("\\}", Dialect::Shell).unwrap().matches("}"));
        assert!(Glob::compile("\\x", Dialect::Shell).unwrap_err().contains("invalid escape '\\x'"));
    }
}
