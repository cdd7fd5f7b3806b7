//! Go's `filepath.Match` for one path element, which is what COPY's
//! wildcards use: `*` (any run of characters), `?` (one character),
//! `[...]` / `[^...]` classes with ranges, and `\` escapes.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    One,
    Star,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

/// Whether `s` has an unescaped `*`, `?` or `[`.
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

fn compile(p: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = p.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                if toks.last() != Some(&Tok::Star) {
                    toks.push(Tok::Star);
                }
            }
            '?' => toks.push(Tok::One),
            '\\' => {
                toks.push(Tok::Lit(*chars.get(i)?));
                i += 1;
            }
            '[' => {
                let negated = chars.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    let mut lo = *chars.get(i)?;
                    i += 1;
                    if lo == ']' && !ranges.is_empty() {
                        break;
                    }
                    if lo == '-' || lo == ']' && ranges.is_empty() {
                        return None; // Go: ErrBadPattern
                    }
                    if lo == '\\' {
                        lo = *chars.get(i)?;
                        i += 1;
                    }
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') {
                        hi = *chars.get(i + 1)?;
                        i += 2;
                        if hi == '\\' {
                            hi = *chars.get(i)?;
                            i += 1;
                        }
                        if hi == ']' || hi == '-' || hi < lo {
                            return None;
                        }
                    }
                    ranges.push((lo, hi));
                }
                toks.push(Tok::Class { negated, ranges });
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    Some(toks)
}

/// Whether the whole of `name` matches `pattern`. A malformed pattern
/// matches nothing (BuildKit ignores Go's ErrBadPattern here).
pub fn matches(pattern: &str, name: &str) -> bool {
    let Some(toks) = compile(pattern) else { return false };
    let name: Vec<char> = name.chars().collect();
    let one = |t: &Tok, c: char| match t {
        Tok::Lit(l) => *l == c,
        Tok::One => c != '/',
        Tok::Class { negated, ranges } => ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated,
        Tok::Star => false,
    };
    // Greedy with backtracking to the last star: linear for one star, O(n*m) at worst.
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if t < toks.len() {
            if toks[t] == Tok::Star {
                star = Some((t, n));
                t += 1;
                continue;
            }
            if one(&toks[t], name[n]) {
                t += 1;
                n += 1;
                continue;
            }
        }
        match star {
            Some((st, sn)) if name[sn] != '/' => {
                star = Some((st, sn + 1));
                t = st + 1;
                n = sn + 1;
            }
            _ => return false,
        }
    }
    toks[t..].iter().all(|t| *t == Tok::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match_semantics() {
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
}
