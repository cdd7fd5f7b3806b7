//! The line-level parser: BuildKit's `parser.Parse`. It turns source text
//! into one [`Node`] per instruction (keyword, leading flags, BuildKit's
//! argument list, heredoc bodies) without interpreting any instruction.
//! [`Node::dump`] prints BuildKit's `Node.Dump()` format.

use super::error::{Error, ErrorKind, Pos, Span};
use super::shell::Lexer;
use std::collections::HashMap;

/// The parser directives at the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub syntax: Option<String>,
    pub escape: char,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives { syntax: None, escape: '\\', check: None }
    }
}

/// Something legal but suspicious, e.g. an empty continuation line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub pos: Pos,
    pub message: String,
}

/// A heredoc attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The terminator word, quotes removed.
    pub name: String,
    /// The body, every line ending in `\n`, leading tabs already removed for `<<-`.
    pub content: String,
    /// False when the delimiter was quoted: the body is then taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs removed from body lines.
    pub chomp: bool,
    /// `3<<EOF` redirects the body to file descriptor 3 (RUN only).
    pub fd: Option<u32>,
}

/// A word of the logical line with its byte offset in [`Node::original`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub offset: usize,
}

/// One instruction as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Lower-cased instruction keyword.
    pub keyword: String,
    /// Leading `--name[=value]` words, quotes removed.
    pub flags: Vec<Word>,
    /// BuildKit's argument list for this instruction (see README of the corpus).
    pub args: Vec<String>,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    /// The argument text after the flags, trimmed, and its offset.
    pub rest: Word,
    /// The nested instruction of ONBUILD.
    pub onbuild: Option<Box<Node>>,
    pub heredocs: Vec<Heredoc>,
    /// The logical line: continuation lines joined, escape tokens removed.
    pub original: String,
    /// Comment lines directly above the instruction.
    pub comments: Vec<String>,
    pub span: Span,
    map: LineMap,
}

/// Maps byte offsets of a logical line back to physical positions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct LineMap {
    /// (logical offset, physical line, column of that offset)
    segments: Vec<(usize, usize, usize)>,
}

/// The parse result: directives and instructions in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    pub directives: Directives,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
    /// Physical lines, for error display.
    pub lines: Vec<String>,
}

impl Ast {
    /// The physical source line (1-based), empty if out of range.
    pub fn line(&self, n: usize) -> &str {
        n.checked_sub(1).and_then(|i| self.lines.get(i)).map(String::as_str).unwrap_or("")
    }

    /// An error at byte `offset` of `node`'s logical line.
    pub fn error_at(&self, node: &Node, offset: usize, kind: ErrorKind) -> Error {
        let pos = node.pos_of(offset);
        Error::new(kind, pos, self.line(pos.line))
    }

    /// BuildKit's `Node.Dump()` of the whole file (no trailing newline).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push('(');
            out.push_str(&n.dump());
            out.push_str(")\n");
        }
        out.trim().to_string()
    }
}

impl Node {
    /// The physical position of byte `offset` of [`Node::original`].
    pub fn pos_of(&self, offset: usize) -> Pos {
        let offset = offset.min(self.original.len());
        let seg = self.map.segments.iter().rev().find(|s| s.0 <= offset).copied();
        match seg {
            Some((start, line, col)) => {
                let chars = self.original.get(start..offset).map(|s| s.chars().count()).unwrap_or(0);
                Pos { line, col: col + chars }
            }
            None => self.span.start,
        }
    }

    /// `Node.Dump()` for one instruction, without the surrounding parentheses.
    pub fn dump(&self) -> String {
        let mut s = self.keyword.to_lowercase();
        if !self.flags.is_empty() {
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(&f.text)).collect();
            s.push_str(&format!(" [{}]", quoted.join(" ")));
        }
        if let Some(sub) = &self.onbuild {
            s.push_str(&format!(" ({})", sub.dump()));
        }
        for a in &self.args {
            s.push(' ');
            s.push_str(&go_quote(a));
        }
        s.trim().to_string()
    }
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint` for non-ASCII: letters, marks,
/// numbers, punctuation, symbols and U+0020, but no other spaces, controls,
/// format characters, surrogates or private use.
fn is_go_printable(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    if c.is_whitespace() || c.is_control() {
        return false;
    }
    !matches!(u,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e
        | 0x2060..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe000..=0xf8ff | 0xf0000..=0x10ffff
        | 0xfdd0..=0xfdef | 0xfffe | 0xffff | 0xe0001 | 0xe0020..=0xe007f)
}

const KNOWN_DIRECTIVES: [&str; 3] = ["syntax", "escape", "check"];

/// Go's `unicode.IsSpace`.
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

fn is_ascii_ws(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

/// Recognises `# key=value` lines until the first other line.
struct DirectiveParser {
    done: bool,
    seen: HashMap<String, ()>,
}

impl DirectiveParser {
    fn parse_line(&mut self, line: &str) -> Result<Option<(String, String)>, ErrorKind> {
        if self.done {
            return Ok(None);
        }
        let Some((key, value)) = match_directive(line) else {
            self.done = true;
            return Ok(None);
        };
        let key = key.to_lowercase();
        if !KNOWN_DIRECTIVES.contains(&key.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.insert(key.clone(), ()).is_some() {
            return Err(ErrorKind::DuplicateDirective(key));
        }
        Ok(Some((key, value)))
    }
}

/// `^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$`
fn match_directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start_matches([' ', '\t']);
    let key_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let rest = rest[key_len..].trim_start_matches([' ', '\t']).strip_prefix('=')?;
    let value = rest.trim_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    Some((key.to_string(), value.to_string()))
}

/// Removes a trailing continuation token. Returns the line and whether the
/// instruction ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    if let Some(before) = body.strip_suffix(escape) {
        if before.is_empty() || !before.ends_with(escape) {
            return (before, false);
        }
    }
    (line, true)
}

/// Splits source text into physical lines as Go's `bufio.ScanLines` does.
fn split_lines(src: &str) -> Vec<String> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut lines: Vec<String> = src.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect();
    if src.ends_with('\n') || src.is_empty() {
        lines.pop();
    }
    lines
}

/// Parses Dockerfile text. Errors carry positions but no file name.
pub fn parse(src: &str) -> Result<Ast, Error> {
    let lines = split_lines(src);
    let mut ast = Ast { directives: Directives::default(), nodes: Vec::new(), warnings: Vec::new(), lines: Vec::new() };
    let mut dp = DirectiveParser { done: false, seen: HashMap::new() };
    let mut comments: Vec<String> = Vec::new();
    let mut i = 0;
    let err_at = |lines: &[String], line: usize, col: usize, kind: ErrorKind| {
        Error::new(kind, Pos { line, col }, lines.get(line.wrapping_sub(1)).cloned().unwrap_or_default())
    };
    while i < lines.len() {
        let raw = &lines[i];
        i += 1;
        let start_line = i;
        if is_comment(raw) {
            let c = raw.trim_start_matches(is_space)[1..].trim();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c.to_string());
            }
        }
        let stripped = raw.trim_start_matches(is_space);
        let start_col = raw[..raw.len() - stripped.len()].chars().count() + 1;
        match dp.parse_line(stripped) {
            Ok(Some((key, value))) => match key.as_str() {
                "escape" => {
                    if value != "\\" && value != "`" {
                        return Err(err_at(&lines, start_line, start_col, ErrorKind::BadEscapeToken(value)));
                    }
                    ast.directives.escape = value.chars().next().unwrap_or('\\');
                }
                "syntax" => ast.directives.syntax = Some(value),
                _ => ast.directives.check = Some(value),
            },
            Ok(None) => {}
            Err(kind) => return Err(err_at(&lines, start_line, start_col, kind)),
        }
        let escape = ast.directives.escape;
        let first = if is_comment(stripped) { "" } else { stripped };
        let (first, mut ended) = trim_continuation(first, escape);
        if ended && first.is_empty() {
            continue;
        }
        let mut line = first.to_string();
        let mut map = LineMap { segments: vec![(0, start_line, start_col)] };
        let mut empty_continuation = false;
        while !ended && i < lines.len() {
            let raw = &lines[i];
            i += 1;
            if is_comment(raw) {
                continue;
            }
            if raw.trim_start_matches(is_space).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (cont, e) = trim_continuation(raw, escape);
            ended = e;
            map.segments.push((line.len(), i, 1));
            line.push_str(cont);
        }
        if empty_continuation {
            ast.warnings.push(Warning {
                pos: Pos { line: start_line, col: start_col },
                message: "empty continuation line: a line ending in the escape character is followed by a blank line; \
                          this will become an error in a future release"
                    .into(),
            });
        }
        if !ended {
            ast.warnings.push(Warning {
                pos: Pos { line: i, col: 1 },
                message: "the file ends in a line continuation".into(),
            });
        }
        let end_line = i;
        let mut node = node_from_line(&line, escape, map, &lines, 0)?;
        node.comments = std::mem::take(&mut comments);
        if matches!(node.keyword.as_str(), "run" | "copy" | "add") && !node.json && !node.args.is_empty() && line.contains("<<") {
            let docs = heredocs_from_line(&line).map_err(|kind| err_at(&lines, start_line, start_col, kind))?;
            for mut doc in docs {
                let mut terminated = false;
                while i < lines.len() {
                    let body = &lines[i];
                    i += 1;
                    let candidate = if doc.chomp { body.trim_start_matches('\t') } else { body.as_str() };
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(if doc.chomp { candidate } else { body });
                    doc.content.push('\n');
                }
                if !terminated {
                    let kind = ErrorKind::UnterminatedHeredoc(doc.name.clone());
                    return Err(err_at(&lines, start_line, start_col, kind));
                }
                node.heredocs.push(doc);
            }
        }
        let last = i.max(end_line);
        node.span = Span {
            start: Pos { line: start_line, col: start_col },
            end: Pos { line: last, col: lines.get(last - 1).map(|l| l.chars().count() + 1).unwrap_or(1) },
        };
        ast.nodes.push(node);
    }
    ast.lines = lines;
    if ast.nodes.is_empty() {
        let line = ast.lines.len();
        return Err(Error::new(ErrorKind::NoInstructions, Pos { line, col: 1 }, ast.line(line).to_string()));
    }
    Ok(ast)
}

/// ONBUILD nests instructions; BuildKit only ever runs one level, so a
/// small bound costs nothing and keeps hostile input off the stack.
const MAX_ONBUILD_NESTING: usize = 8;

fn node_from_line(line: &str, escape: char, map: LineMap, lines: &[String], depth: usize) -> Result<Node, Error> {
    let trimmed = line.trim_matches(is_space);
    let lead = line.len() - line.trim_start_matches(is_space).len();
    let kw_len = trimmed.find(is_ascii_ws).unwrap_or(trimmed.len());
    let keyword = trimmed[..kw_len].to_lowercase();
    let after_kw = &trimmed[kw_len..];
    let after_ws = after_kw.trim_start_matches(is_ascii_ws);
    let args_offset = lead + kw_len + (after_kw.len() - after_ws.len());
    let (flags, rest_rel) = extract_flags(after_ws, args_offset);
    let rest_untrimmed = &after_ws[rest_rel..];
    let rest_text = rest_untrimmed.trim_matches(is_space);
    let rest_offset = args_offset + rest_rel + (rest_untrimmed.len() - rest_untrimmed.trim_start_matches(is_space).len());
    let mut node = Node {
        keyword,
        flags,
        args: Vec::new(),
        json: false,
        rest: Word { text: rest_text.to_string(), offset: rest_offset },
        onbuild: None,
        heredocs: Vec::new(),
        original: line.to_string(),
        comments: Vec::new(),
        span: Span::default(),
        map,
    };
    let start = node.pos_of(lead);
    node.span = Span { start, end: start };
    let fail = |node: &Node, kind: ErrorKind| {
        let pos = node.pos_of(rest_offset);
        Error::new(kind, pos, lines.get(pos.line.wrapping_sub(1)).cloned().unwrap_or_default())
    };
    let rest = rest_text;
    match node.keyword.as_str() {
        "run" | "cmd" | "entrypoint" | "shell" => {
            if !rest.is_empty() {
                match parse_json(rest) {
                    Json::Array(v) => {
                        node.args = v;
                        node.json = true;
                    }
                    Json::NotStrings => {
                        return Err(fail(&node, ErrorKind::NotStringArray { instruction: node.keyword.to_uppercase() }))
                    }
                    Json::Not => node.args = vec![rest.to_string()],
                }
            }
        }
        "add" | "copy" | "volume" => match parse_json(rest) {
            Json::Array(v) => {
                node.args = v;
                node.json = true;
            }
            Json::NotStrings => return Err(fail(&node, ErrorKind::NotStringArray { instruction: node.keyword.to_uppercase() })),
            Json::Not => node.args = split_ws(rest),
        },
        "from" | "expose" => node.args = split_ws(rest),
        "maintainer" | "user" | "workdir" | "stopsignal" => {
            if !rest.is_empty() {
                node.args = vec![rest.to_string()];
            }
        }
        "env" | "label" => {
            let upper = node.keyword.to_uppercase();
            node.args = parse_name_val(rest, escape).map_err(|m| fail(&node, ErrorKind::Arguments { instruction: upper, message: m }))?;
        }
        "arg" => node.args = parse_words(rest, escape),
        "healthcheck" => {
            let sep = rest.find(is_space).unwrap_or(rest.len());
            if sep > 0 {
                node.args.push(rest[..sep].to_string());
                let cmd = rest[sep..].trim_start_matches(is_space);
                if !cmd.is_empty() {
                    match parse_json(cmd) {
                        Json::Array(v) => {
                            node.args.extend(v);
                            node.json = true;
                        }
                        Json::NotStrings => {
                            return Err(fail(&node, ErrorKind::NotStringArray { instruction: "HEALTHCHECK".into() }))
                        }
                        Json::Not => node.args.push(cmd.to_string()),
                    }
                }
            }
        }
        "onbuild" => {
            if depth >= MAX_ONBUILD_NESTING {
                let kind = ErrorKind::Arguments { instruction: "ONBUILD".into(), message: "is nested too deeply".into() };
                return Err(fail(&node, kind));
            }
            if !rest.is_empty() {
                let mut sub = node_from_line(rest, escape, LineMap::default(), lines, depth + 1)?;
                let first = node.pos_of(rest_offset);
                sub.map = LineMap { segments: vec![(0, first.line, first.col)] };
                sub.span = Span { start: first, end: first };
                node.onbuild = Some(Box::new(sub));
            }
        }
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

enum Json {
    Array(Vec<String>),
    NotStrings,
    Not,
}

fn parse_json(rest: &str) -> Json {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return Json::Not;
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(rest) {
        Ok(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) => out.push(s),
                    _ => return Json::NotStrings,
                }
            }
            Json::Array(out)
        }
        Err(_) => Json::Not,
    }
}

fn split_ws(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_ascii_ws).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// BuildKit's `extractBuilderFlags`: leading `--` words. Returns the flags and
/// the byte offset in `line` where the remaining arguments start.
fn extract_flags(line: &str, base: usize) -> (Vec<Word>, usize) {
    let mut flags = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while let Some(&(_, c)) = chars.peek() {
            if !is_space(c) {
                break;
            }
            chars.next();
        }
        let Some(&(start, _)) = chars.peek() else { return (flags, line.len()) };
        if !line[start..].starts_with("--") {
            return (flags, start);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        let mut end = line.len();
        while let Some((pos, c)) = chars.next() {
            match quote {
                None if is_space(c) => {
                    end = pos;
                    break;
                }
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    blank_ok = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == '\\' => match chars.next() {
                    Some((_, n)) => word.push(n),
                    None => quote = None,
                },
                _ => word.push(c),
            }
        }
        if word == "--" {
            return (flags, end);
        }
        if blank_ok || !word.is_empty() {
            flags.push(Word { text: word, offset: base + start });
        }
    }
}

/// BuildKit's `parseWords`: split on whitespace outside quotes, keeping quotes
/// and escapes as written.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if quote.is_none() {
            if is_space(c) {
                if in_word && (blank_ok || !word.is_empty()) {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                in_word = false;
                blank_ok = false;
                continue;
            }
            in_word = true;
            if c == '\'' || c == '"' {
                quote = Some(c);
                blank_ok = true;
            }
            if c == escape {
                // An escape at the very end is dropped.
                if let Some(n) = chars.next() {
                    word.push(c);
                    word.push(n);
                }
                continue;
            }
            word.push(c);
        } else {
            let q = quote.unwrap_or('"');
            if c == q {
                quote = None;
                word.push(c);
                continue;
            }
            if c == escape && q != '\'' {
                match chars.next() {
                    Some(n) => {
                        word.push(c);
                        word.push(n);
                    }
                    None => quote = None,
                }
                continue;
            }
            word.push(c);
        }
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// ENV/LABEL arguments as (key, value, separator) triples.
fn parse_name_val(rest: &str, escape: char) -> Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else { return Ok(Vec::new()) };
    if !first.contains('=') {
        let mut parts = rest.splitn(2, is_ascii_ws);
        let key = parts.next().unwrap_or("");
        let value = parts.next().map(|v| v.trim_start_matches(is_ascii_ws));
        return match value {
            Some(v) => Ok(vec![key.to_string(), v.to_string(), String::new()]),
            None => Err("must have two arguments".into()),
        };
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("syntax error: can't find = in {w:?}; expected the form name=value"));
        };
        out.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(out)
}

/// Whether one word of a RUN/COPY/ADD line (as written) introduces a heredoc.
pub fn is_heredoc_word(word: &str) -> bool {
    heredocs_from_line(word).is_ok_and(|docs| docs.len() == 1)
}

/// `^(\d*)<<(-?)([^<]*)$` on each word of the line.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, ErrorKind> {
    let raw = Lexer { raw_quotes: true, raw_escapes: true, ..Lexer::new('\\') };
    let empty: HashMap<String, String> = HashMap::new();
    let words = raw.process_words(line, &empty).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let Some(after) = word[digits..].strip_prefix("<<") else { continue };
        let (chomp, name_src) = match after.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, after),
        };
        if name_src.is_empty() || name_src.contains('<') {
            continue;
        }
        let plain = Lexer { skip_unset: true, ..Lexer::new('\\') };
        let words = plain.process_words(name_src, &empty).map_err(|e| ErrorKind::Arguments {
            instruction: "heredoc".into(),
            message: format!("delimiter: {}", e.message),
        })?;
        if words.len() != 1 {
            continue;
        }
        let raw_words = Lexer { raw_quotes: true, ..plain }.process_words(name_src, &empty).unwrap_or_default();
        let quotes = |s: &str| s.matches(['\'', '"']).count();
        let expand = raw_words.len() == 1 && quotes(&words[0]) == quotes(&raw_words[0]);
        let fd = if digits > 0 { word[..digits].parse().ok() } else { None };
        docs.push(Heredoc { name: words[0].clone(), content: String::new(), expand, chomp, fd });
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(src: &str) -> String {
        parse(src).unwrap().dump()
    }

    #[test]
    fn continuation_and_comments() {
        assert_eq!(dump("RUN a \\\n# c\n\n  b\n"), "(run \"a   b\")");
        assert_eq!(dump("# escape=`\nRUN a `\n b\n"), "(run \"a  b\")");
        assert_eq!(dump("RUN a\\\\\nCMD b"), "(run \"a\\\\\\\\\")\n(cmd \"b\")");
    }

    #[test]
    fn directives_only_at_top() {
        let ast = parse("# syntax=docker/dockerfile:1\n# check=skip=all\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(ast.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(ast.directives.check.as_deref(), Some("skip=all"));
        assert_eq!(ast.directives.escape, '`');
        let ast = parse("FROM a\n# escape=`\n").unwrap();
        assert_eq!(ast.directives.escape, '\\');
        let e = parse("# escape=x\nFROM a").unwrap_err();
        assert!(matches!(*e.kind, ErrorKind::BadEscapeToken(_)));
        let e = parse("# syntax=a\n# syntax=b\nFROM a").unwrap_err();
        assert_eq!(e.pos.line, 2);
    }

    #[test]
    fn heredocs() {
        let ast = parse("FROM a\nRUN <<EOF\necho hi\n  x\nEOF\nCOPY <<A <<\"B\" /dst/\na\nA\nb $x\nB\nRUN <<-E 3<<'F' cat\n\t\ttabbed\n\tE\nbody F\nF\n").unwrap();
        let run = &ast.nodes[1];
        assert_eq!(run.heredocs, vec![Heredoc { name: "EOF".into(), content: "echo hi\n  x\n".into(), expand: true, chomp: false, fd: None }]);
        let copy = &ast.nodes[2];
        assert_eq!(copy.args, vec!["<<A", "<<\"B\"", "/dst/"]);
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[1].name, "B");
        assert!(!copy.heredocs[1].expand);
        assert_eq!(copy.heredocs[1].content, "b $x\n");
        let r = &ast.nodes[3];
        assert_eq!(r.heredocs[0].content, "tabbed\n");
        assert!(r.heredocs[0].chomp);
        assert_eq!(r.heredocs[1].fd, Some(3));
        assert_eq!(r.heredocs[1].content, "body F\n");
        assert_eq!(r.span.start.line, 11);
        assert_eq!(r.span.end.line, 15);
        assert_eq!(ast.dump().lines().count(), 4);
    }

    #[test]
    fn heredoc_not_in_json_or_quotes() {
        let ast = parse("RUN [\"<<EOF\"]\nRUN echo '<<EOF'\nCMD <<EOF\n").unwrap();
        assert!(ast.nodes.iter().all(|n| n.heredocs.is_empty()));
    }

    #[test]
    fn unterminated_heredoc() {
        let e = parse("FROM a\nRUN <<EOF\necho\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 1 });
        assert!(e.to_string().contains("unterminated heredoc"), "{e}");
    }

    #[test]
    fn positions_follow_continuations() {
        let ast = parse("FROM a\n  COPY --from=x \\\n   --chmod=7 a b\n").unwrap();
        let n = &ast.nodes[1];
        assert_eq!(n.span.start, Pos { line: 2, col: 3 });
        assert_eq!(n.pos_of(n.flags[0].offset), Pos { line: 2, col: 8 });
        assert_eq!(n.pos_of(n.flags[1].offset), Pos { line: 3, col: 4 });
        assert_eq!(n.pos_of(n.rest.offset), Pos { line: 3, col: 14 });
    }

    #[test]
    fn onbuild_nesting_is_bounded() {
        assert_eq!(dump("ONBUILD ONBUILD RUN x"), "(onbuild (onbuild (run \"x\")))");
        let deep = "ONBUILD ".repeat(50_000) + "RUN x";
        assert!(parse(&deep).unwrap_err().to_string().contains("nested too deeply"));
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a\"\\\t\u{0}\u{7f}♥\u{a0}"), "\"a\\\"\\\\\\t\\x00\\x7f♥\\u00a0\"");
    }
}
