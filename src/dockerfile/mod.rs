//! The Dockerfile frontend: parser, shell-word expansion, stage graph, .dockerignore.
//!
//! [`parser`] turns text into BuildKit-shaped nodes (and dumps them like
//! BuildKit), [`instructions`] types them, [`expand`] evaluates ARG/ENV and
//! expands words per instruction, [`stages`] resolves the stage graph and
//! [`dockerignore`] reads context exclusion patterns.

pub mod error;
pub mod parser;
pub mod shell;

pub use error::{Error, ErrorKind, Pos, Span};
pub mod instructions;
pub mod mount;

pub use instructions::{Dockerfile, Instruction, InstructionKind, ShellOrExec, Stage};
pub mod expand;
pub mod stages;
pub mod dockerignore;
