//! BuildKit's `BFlags` (bflag.go): an instruction's `--name=value` and
//! boolean `--name` flags, checked against the flags it accepts, with errors
//! pointing at the offending flag.

use super::super::error::{Error, ErrorKind};
use super::super::parser::{Ast, Node};

/// The flags given to one instruction.
pub(super) struct Flags<'a> {
    ast: &'a Ast,
    node: &'a Node,
    /// (name, value if `=` was given, offset)
    items: Vec<(String, Option<String>, usize)>,
}

/// A flag error for `node`'s instruction.
pub(super) fn bad_flag(node: &Node, flag: &str, message: String) -> ErrorKind {
    ErrorKind::BadFlag { instruction: node.keyword.to_uppercase(), flag: flag.to_string(), message }
}

impl<'a> Flags<'a> {
    /// Reads `node`'s flags; any not in `allowed`, or a non-repeatable one
    /// given twice, is an error.
    pub(super) fn parse(ast: &'a Ast, node: &'a Node, allowed: &[&str]) -> Result<Self, Error> {
        let mut items = Vec::new();
        for w in &node.flags {
            let body = w.text.strip_prefix("--").unwrap_or(&w.text);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if !allowed.contains(&name) {
                let kind = ErrorKind::UnknownFlag {
                    instruction: node.keyword.to_uppercase(),
                    flag: format!("--{name}"),
                    expected: allowed.iter().map(|a| format!("--{a}")).collect(),
                };
                return Err(ast.error_at(node, w.offset, kind));
            }
            let repeatable = matches!(name, "mount" | "exclude");
            if !repeatable && items.iter().any(|(n, _, _): &(String, _, _)| n == name) {
                let kind = bad_flag(node, &format!("--{name}"), "is given more than once".into());
                return Err(ast.error_at(node, w.offset, kind));
            }
            items.push((name.to_string(), value, w.offset));
        }
        Ok(Flags { ast, node, items })
    }

    /// Whether no flag was given.
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn present(&self, name: &str) -> bool {
        self.items.iter().any(|(n, _, _)| n == name)
    }

    /// An error about the value of `flag` (written with its dashes) at `offset`.
    pub(super) fn error(&self, offset: usize, flag: &str, message: String) -> Error {
        self.ast.error_at(self.node, offset, bad_flag(self.node, flag, message))
    }

    /// `--name=value` and the value's offset; `--name` alone is an error.
    pub(super) fn string_at(&mut self, name: &str) -> Result<Option<(String, usize)>, Error> {
        let Some((_, value, off)) = self.items.iter().find(|(n, _, _)| n == name) else { return Ok(None) };
        match value {
            Some(v) => Ok(Some((v.clone(), *off))),
            None => Err(self.error(*off, &format!("--{name}"), "is missing a value: expected --name=value".into())),
        }
    }

    pub(super) fn string(&mut self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.string_at(name)?.map(|(v, _)| v))
    }

    /// Every value of a repeatable flag, with its offset.
    pub(super) fn strings_at(&mut self, name: &str) -> Vec<(String, usize)> {
        self.items.iter().filter(|(n, _, _)| n == name).map(|(_, v, o)| (v.clone().unwrap_or_default(), *o)).collect()
    }

    /// Every value of a repeatable flag.
    pub(super) fn strings(&mut self, name: &str) -> Vec<String> {
        self.strings_at(name).into_iter().map(|(s, _)| s).collect()
    }

    /// `--name`, `--name=true` or `--name=false` (any case); absent is false.
    pub(super) fn bool(&mut self, name: &str) -> Result<bool, Error> {
        let Some((_, value, off)) = self.items.iter().find(|(n, _, _)| n == name) else { return Ok(false) };
        match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(self.error(*off, &format!("--{name}"), format!("expects true or false, not {other:?}"))),
        }
    }
}
