//! Source positions and the frontend's error type. Every error carries the
//! place it happened and renders the offending line with a caret under it.

use std::fmt;
use std::path::PathBuf;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A range of source text, `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: Pos,
    pub end: Pos,
}

/// What went wrong, without the location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("file with no instructions")]
    NoInstructions,
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    #[error("invalid escape token {0:?}: expected ` or \\")]
    BadEscapeToken(String),
    #[error("unterminated heredoc: no line {0:?} before the end of the file")]
    UnterminatedHeredoc(String),
    #[error("{instruction}: JSON array elements must all be strings")]
    NotStringArray { instruction: String },
    #[error("{instruction} {message}")]
    Arguments { instruction: String, message: String },
    #[error("unknown instruction: {name}{}", suggestion_text(.suggestion))]
    UnknownInstruction { name: String, suggestion: Option<String> },
    #[error("unknown flag {flag} for {instruction}{}", expected_flags(.expected))]
    UnknownFlag { instruction: String, flag: String, expected: Vec<String> },
    #[error("{instruction} {flag}: {message}")]
    BadFlag { instruction: String, flag: String, message: String },
    #[error("{0}")]
    Expansion(String),
    #[error("{0}")]
    Stage(String),
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Io(String),
    /// A build step failed (the build engine's errors, placed on their instruction).
    #[error("{0}")]
    Step(String),
}

fn suggestion_text(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

fn expected_flags(flags: &[String]) -> String {
    if flags.is_empty() {
        " (it takes no flags)".to_string()
    } else {
        format!(" (expected one of {})", flags.join(", "))
    }
}

/// An error at a place in a Dockerfile (or .dockerignore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub file: Option<PathBuf>,
    pub pos: Pos,
    /// The physical source line at `pos`, for the caret display.
    pub source_line: String,
    /// Boxed to keep `Result<_, Error>` small on the happy path.
    pub kind: Box<ErrorKind>,
}

impl Error {
    pub fn new(kind: ErrorKind, pos: Pos, source_line: impl Into<String>) -> Self {
        Error { file: None, pos, source_line: source_line.into(), kind: Box::new(kind) }
    }

    /// Attaches the file name, used when rendering.
    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }
}

impl std::error::Error for Error {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_ref().map(|p| p.display().to_string());
        let file = file.as_deref().unwrap_or("Dockerfile");
        if self.pos.line == 0 {
            return write!(f, "{file}: {}", self.kind);
        }
        write!(f, "{file}:{}:{}: {}", self.pos.line, self.pos.col, self.kind)?;
        let num = self.pos.line.to_string();
        let text: String = self.source_line.chars().map(|c| if c == '\t' { ' ' } else { c }).collect();
        let pad = " ".repeat(num.len());
        let caret = " ".repeat(self.pos.col.saturating_sub(1));
        write!(f, "\n {num} | {text}\n {pad} | {caret}^")
    }
}
