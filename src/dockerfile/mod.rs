//! The Dockerfile frontend: parser, shell-word expansion, stage graph, .dockerignore.
//!
//! - [`parser`] turns text into BuildKit-shaped nodes (and dumps them like
//!   BuildKit's `Node.Dump()`), keeping source positions;
//! - [`instructions`] types them into a [`Dockerfile`] of [`Stage`]s, checking
//!   every instruction and flag;
//! - [`expand`] evaluates global ARGs and walks a stage's ARG/ENV scope,
//!   expanding exactly the words BuildKit expands ([`shell`] is the lexer);
//! - [`stages`] resolves bases and `--from` references and prunes to a target;
//! - [`dockerignore`] decides which context paths a build may see;
//! - [`lint`] runs BuildKit's build checks (`--check`);
//! - [`glob`] is the wildcard matcher COPY, .dockerignore and the lexer share.
//!
//! The build engine's path: [`parse_file`], then [`expand::Evaluator::new`],
//! [`stages::resolve`], and per stage [`expand::Evaluator::scope`] +
//! [`expand::Scope::expand`] on each instruction in order.

use std::path::Path;

pub mod dockerignore;
pub mod error;
pub mod expand;
pub mod glob;
pub mod instructions;
pub mod lint;
pub mod mount;
pub mod parser;
pub mod shell;
pub mod stages;

pub use error::{Error, ErrorKind, Pos, Span};
pub use instructions::{Dockerfile, Instruction, InstructionKind, ShellOrExec, Stage};

/// Parses Dockerfile text; errors name `Dockerfile` as the file.
pub fn parse_str(src: &str) -> Result<Dockerfile, Error> {
    instructions::parse(src)
}

/// Reads and parses a Dockerfile; errors name `path`. Invalid UTF-8 is
/// replaced with U+FFFD rather than rejected.
pub fn parse_file(path: &Path) -> Result<Dockerfile, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::new(ErrorKind::Io(format!("cannot read the Dockerfile: {e}")), Pos::default(), "").in_file(path))?;
    instructions::parse(&String::from_utf8_lossy(&bytes)).map_err(|e| e.in_file(path))
}
