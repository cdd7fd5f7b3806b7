//! BuildKit's shell-word lexer: quote removal, escapes and `$VAR` /
//! `${VAR<op>word}` expansion, optionally followed by word splitting. It is
//! not a shell: there is no command substitution, globbing or arithmetic.

use std::collections::HashMap;

use super::glob::{Dialect, Glob};

/// Variables visible to an expansion.
pub trait Vars {
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Vars for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Vars for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Case-insensitive names, as on Windows.
pub struct CaseInsensitive<'a, V: Vars + ?Sized>(pub &'a V, pub &'a [String]);

impl<V: Vars + ?Sized> Vars for CaseInsensitive<'_, V> {
    fn lookup(&self, name: &str) -> Option<&str> {
        let key = self.1.iter().find(|k| k.eq_ignore_ascii_case(name) || k.to_uppercase() == name.to_uppercase())?;
        self.0.lookup(key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {input:?}: {message}")]
pub struct ShellError {
    pub input: String,
    pub message: String,
}

/// Lexer settings. The defaults are the ones Dockerfile instructions use.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
    /// Keep quote characters in the output.
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset: bool,
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer { escape, raw_quotes: false, raw_escapes: false, skip_unset: false }
    }

    /// One word: quotes removed, escapes applied, variables expanded, no splitting.
    pub fn process_word(&self, word: &str, vars: &dyn Vars) -> Result<String, ShellError> {
        self.run(word, vars).map(|(w, _)| w)
    }

    /// Like [`Lexer::process_word`], then split into words on unquoted whitespace.
    pub fn process_words(&self, word: &str, vars: &dyn Vars) -> Result<Vec<String>, ShellError> {
        self.run(word, vars).map(|(_, ws)| ws)
    }

    fn run(&self, word: &str, vars: &dyn Vars) -> Result<(String, Vec<String>), ShellError> {
        let mut st = State { lex: *self, chars: word.chars().collect(), pos: 0, vars, raw_escapes: self.raw_escapes, depth: 0 };
        st.stop_on(None, self.raw_escapes)
            .map_err(|message| ShellError { input: word.to_string(), message })
    }
}

struct State<'a> {
    lex: Lexer,
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn Vars,
    raw_escapes: bool,
    /// Nesting of `${...}`, bounded so hostile input cannot exhaust the stack.
    depth: usize,
}

const MAX_NESTING: usize = 64;
/// The longest word an expansion may produce. Far above what a process can
/// receive (Linux refuses an argument or variable over 128 KiB), yet small
/// enough that a chain like `ENV a=$a$a` fails with an error instead of
/// doubling until the host runs out of memory.
const MAX_EXPANDED: usize = 1 << 20;

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

type Res<T> = Result<T, String>;

impl State<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes up to `stop` (consumed) or the end of input.
    fn stop_on(&mut self, stop: Option<char>, raw_escapes: bool) -> Res<(String, Vec<String>)> {
        if self.depth >= MAX_NESTING {
            return Err(format!("variable substitutions nested more than {MAX_NESTING} deep"));
        }
        self.depth += 1;
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Res<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let s = self.dollar()?;
                    if result.len() + s.len() > MAX_EXPANDED {
                        return Err(format!("the expansion is longer than {} MiB", MAX_EXPANDED >> 20));
                    }
                    result.push_str(&s);
                    words.add_string(&s);
                }
                '\'' | '"' => {
                    let s = if ch == '\'' { self.single_quote()? } else { self.double_quote()? };
                    result.push_str(&s);
                    words.add_raw_string(&s);
                }
                _ => {
                    self.pos += 1;
                    let mut ch = ch;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        match self.next() {
                            None => break,
                            Some(c) => ch = c,
                        }
                        words.add_raw_char(ch);
                    } else {
                        words.add_char(ch);
                    }
                    result.push(ch);
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!("unexpected end of statement while looking for matching {stop}"));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Res<String> {
        let mut out = String::new();
        let q = self.next();
        if self.lex.raw_quotes {
            out.extend(q);
        }
        loop {
            match self.next() {
                None => return Err("unexpected end of statement while looking for matching single-quote".into()),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Res<String> {
        let mut out = String::new();
        let q = self.next();
        if self.lex.raw_quotes {
            out.extend(q);
        }
        loop {
            match self.peek() {
                None => return Err("unexpected end of statement while looking for matching double-quote".into()),
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let v = self.dollar()?;
                    out.push_str(&v);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                self.pos += 1;
                                ch = c;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(c) = self.peek().filter(|c| is_digit(*c)) {
                    self.pos += 1;
                    name.push(c);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return ch.to_string();
            }
            if !(ch.is_alphabetic() || is_digit(ch) || ch == '_') {
                break;
            }
            self.pos += 1;
            name.push(ch);
        }
        name
    }

    fn get(&self, name: &str) -> Option<String> {
        self.vars.lookup(name).map(str::to_string)
    }

    fn dollar(&mut self) -> Res<String> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1; // '{'
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            _ => {}
        }
        let name = self.name();
        let first = self.next();
        let mut op = String::new();
        op.extend(first);
        match first {
            Some('}') => Ok(match self.get(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                let null_is_unset = first == Some(':');
                let ch = if null_is_unset {
                    let c = self.next();
                    op.extend(c);
                    c
                } else {
                    first
                };
                let raw = matches!(ch, Some('#' | '%'));
                let word = match self.stop_on(Some('}'), raw) {
                    Ok((w, _)) => w,
                    Err(e) if self.peek().is_none() => {
                        let _ = e;
                        return Err("syntax error: missing '}'".into());
                    }
                    Err(e) => return Err(e),
                };
                let value = self.get(&name);
                if self.lex.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{op}{word}}}"));
                }
                let empty = value.as_deref().is_none_or(|v| null_is_unset && v.is_empty());
                match ch {
                    Some('-') => Ok(if empty { word } else { value.unwrap_or_default() }),
                    Some('+') => Ok(if empty { String::new() } else { word }),
                    Some('?') => match value {
                        None => Err(format!("{name}: {}", if word.is_empty() { "is not allowed to be unset" } else { &word })),
                        Some(v) if null_is_unset && v.is_empty() => {
                            Err(format!("{name}: {}", if word.is_empty() { "is not allowed to be empty" } else { &word }))
                        }
                        Some(v) => Ok(v),
                    },
                    Some(c @ ('#' | '%')) => {
                        let (greedy, pat) = match word.strip_prefix(c) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        let pattern = Glob::compile(pat, Dialect::Shell)?;
                        let value: Vec<char> = value.unwrap_or_default().chars().collect();
                        let kept = if c == '#' {
                            match pattern.prefix_match(&value, greedy) {
                                Some(end) => &value[end..],
                                None => &value[..],
                            }
                        } else {
                            match pattern.suffix_match(&value, greedy) {
                                Some(start) => &value[..start],
                                None => &value[..],
                            }
                        };
                        Ok(kept.iter().collect())
                    }
                    _ => Err(format!("unsupported modifier ({op}) in substitution")),
                }
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pattern = match self.stop_on(Some('/'), true) {
                    Ok((w, _)) => w,
                    Err(_) if self.peek().is_none() => return Err("syntax error: missing '/' in ${}".into()),
                    Err(e) => return Err(e),
                };
                let replacement = match self.stop_on(Some('}'), true) {
                    Ok((w, _)) => w,
                    Err(_) if self.peek().is_none() => return Err("syntax error: missing '}'".into()),
                    Err(e) => return Err(e),
                };
                let value = self.get(&name);
                if self.lex.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let compiled = Glob::compile(&pattern, Dialect::Shell)?;
                let value: Vec<char> = value.unwrap_or_default().chars().collect();
                replace(&compiled, &value, &replacement, all)
            }
            _ => Err(format!("unsupported modifier ({op}) in substitution")),
        }
    }
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

/// Replaces the first (or every) match of `pattern` in `text`, with Go's
/// ReplaceAllString rules.
fn replace(pattern: &Glob, text: &[char], replacement: &str, all: bool) -> Res<String> {
    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= text.len() {
        let Some((a, b)) = pattern.find(text, search) else { break };
        out.extend(&text[last_end..a]);
        if b > last_end || a == 0 {
            expand_template(&mut out, replacement, &text[a..b]);
        }
        if out.len() > MAX_WORD {
            return Err(format!("substitution result is larger than {MAX_WORD} bytes"));
        }
        last_end = b;
        if !all {
            break;
        }
        search = if search + 1 > b { search + 1 } else { b };
    }
    out.extend(&text[last_end..]);
    Ok(out)
}

/// The largest word an expansion may produce; nested `${v//x/y}` can
/// otherwise grow exponentially.
const MAX_WORD: usize = 1 << 20;

/// Go's regexp template expansion: `$0`/`${0}` is the match, `$$` a dollar,
/// other group references are empty (the pattern has no groups).
fn expand_template(out: &mut String, template: &str, matched: &[char]) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (name, after) = if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(j) if j > 0 && r[..j].chars().all(|c| c.is_alphanumeric() || c == '_') => (&r[..j], &r[j + 1..]),
                _ => ("", rest),
            }
        } else {
            let j = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            (&rest[..j], &rest[j..])
        };
        if name.is_empty() {
            out.push('$');
            continue;
        }
        if name.parse::<u64>() == Ok(0) {
            out.extend(matched);
        }
        rest = after;
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [("PWD", "/home"), ("EMPTY", ""), ("F", "foo.tar.gz"), ("P", "a/b/c")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn w(s: &str) -> Result<String, ShellError> {
        Lexer::new('\\').process_word(s, &env())
    }

    #[test]
    fn defaults_and_alternatives() {
        assert_eq!(w("${X:-d}").unwrap(), "d");
        assert_eq!(w("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(w("${EMPTY-d}").unwrap(), "");
        assert_eq!(w("${X-d}").unwrap(), "d");
        assert_eq!(w("${PWD:+alt}").unwrap(), "alt");
        assert_eq!(w("${EMPTY+alt}").unwrap(), "alt");
        assert_eq!(w("${EMPTY:+alt}").unwrap(), "");
        assert!(w("${X:?must be set}").unwrap_err().message.contains("must be set"));
        assert!(w("${EMPTY:?}").is_err());
        assert_eq!(w("${EMPTY?}").unwrap(), "");
    }

    #[test]
    fn pattern_trims() {
        assert_eq!(w("${F#*.}").unwrap(), "tar.gz");
        assert_eq!(w("${F##*.}").unwrap(), "gz");
        assert_eq!(w("${F%.*}").unwrap(), "foo.tar");
        assert_eq!(w("${F%%.*}").unwrap(), "foo");
        assert_eq!(w("${F#nomatch}").unwrap(), "foo.tar.gz");
        assert_eq!(w("${F%\\*}").unwrap(), "foo.tar.gz");
        assert_eq!(w("${F#f?o}").unwrap(), ".tar.gz");
    }

    #[test]
    fn replacements() {
        assert_eq!(w("${P/\\//-}").unwrap(), "a-b/c");
        assert_eq!(w("${P//\\//-}").unwrap(), "a-b-c");
        assert_eq!(w("${F/t*r/X}").unwrap(), "foo.X.gz");
        assert_eq!(w("${F//o/0}").unwrap(), "f00.tar.gz");
        assert_eq!(w("${F/o/}").unwrap(), "fo.tar.gz");
        assert_eq!(w("${F/o/<\\$0>}").unwrap(), "f<\\o>o.tar.gz");
        assert!(w("${F/o").is_err());
    }

    #[test]
    fn words_split_after_expansion() {
        let mut e = env();
        e.insert("S".into(), "a  b".into());
        let lex = Lexer::new('\\');
        assert_eq!(lex.process_words("x${S}y \"${S}\"", &e).unwrap(), vec!["xa", "by", "a  b"]);
    }

    #[test]
    fn backtick_escape() {
        let lex = Lexer::new('`');
        assert_eq!(lex.process_word("a`$PWD\\x", &env()).unwrap(), "a$PWD\\x");
    }

    #[test]
    fn leftmost_longest_replacement() {
        let mut e = env();
        e.insert("S".into(), "xaaby ab".into());
        let lex = Lexer::new('\\');
        assert_eq!(lex.process_word("${S/a*b/-}", &e).unwrap(), "x-");
        assert_eq!(lex.process_word("${S//a?/-}", &e).unwrap(), "x-by -");
        assert_eq!(lex.process_word("${S//?/.}", &e).unwrap(), "........");
        assert_eq!(lex.process_word("${S//x*/}", &e).unwrap(), "");
        assert_eq!(lex.process_word("${S///-}", &e).unwrap(), "-x-a-a-b-y- -a-b-");
        assert_eq!(lex.process_word("${S%a*}", &e).unwrap(), "xaaby ");
        assert_eq!(lex.process_word("${S%%a*}", &e).unwrap(), "x");
    }

    #[test]
    fn exponential_replacement_is_bounded() {
        let mut word = "${F///F}".to_string();
        for _ in 0..12 {
            word = format!("${{F///{word}}}");
        }
        assert!(w(&word).unwrap_err().message.contains("larger than"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "${A:-".repeat(100_000) + &"}".repeat(100_000);
        assert!(w(&deep).unwrap_err().message.contains("nested"));
        let ok = "${A:-".repeat(10) + "x" + &"}".repeat(10);
        assert_eq!(w(&ok).unwrap(), "x");
    }

    #[test]
    fn skip_unset_and_raw() {
        let lex = Lexer { skip_unset: true, raw_quotes: true, ..Lexer::new('\\') };
        assert_eq!(lex.process_word("'$X' ${Y:-z} $PWD", &env()).unwrap(), "'$X' ${Y:-z} /home");
    }
}
