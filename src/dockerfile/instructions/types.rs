//! The typed Dockerfile: BuildKit's instruction and command types (a
//! [`Dockerfile`] of [`Stage`]s holding [`Instruction`]s), with values kept as
//! written for [`crate::dockerfile::expand`] to expand per stage.

use std::time::Duration;

use super::super::error::{Error, ErrorKind, Span};
use super::super::mount::Mount;
use super::super::parser::{Directives, Heredoc, Warning};

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    pub directives: Directives,
    /// ARGs before the first FROM: usable in FROM lines.
    pub global_args: Vec<ArgDecl>,
    pub stages: Vec<Stage>,
    pub warnings: Vec<Warning>,
    /// The physical source lines, for error messages from later phases.
    pub source: Vec<String>,
}

impl Dockerfile {
    /// An error at the start of `span`, showing its source line.
    pub fn error_at(&self, span: Span, kind: ErrorKind) -> Error {
        let line = span.start.line.checked_sub(1).and_then(|i| self.source.get(i)).cloned().unwrap_or_default();
        Error::new(kind, span.start, line)
    }

    /// The stage called `name` (case-insensitive).
    pub fn stage_by_name(&self, name: &str) -> Option<&Stage> {
        let name = name.to_lowercase();
        self.stages.iter().find(|s| s.name.as_deref() == Some(name.as_str()))
    }
}

/// One build stage: a FROM and the instructions up to the next FROM.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub index: usize,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The base image or stage name, as written (may reference global ARGs).
    pub base: String,
    /// `FROM --platform=...`, as written.
    pub platform: Option<String>,
    pub span: Span,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub span: Span,
    pub kind: InstructionKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InstructionKind {
    Run(Run),
    Cmd(ShellOrExec),
    Entrypoint(ShellOrExec),
    Shell(Vec<String>),
    Copy(Copy),
    Add(Add),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Arg(Vec<ArgDecl>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    StopSignal(String),
    Maintainer(String),
    Healthcheck(Healthcheck),
    /// The trigger instruction, as written, to store in the image config.
    Onbuild(String),
}

impl InstructionKind {
    /// The instruction keyword, upper-case.
    pub fn keyword(&self) -> &'static str {
        match self {
            InstructionKind::Run(_) => "RUN",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Entrypoint(_) => "ENTRYPOINT",
            InstructionKind::Shell(_) => "SHELL",
            InstructionKind::Copy(_) => "COPY",
            InstructionKind::Add(_) => "ADD",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Arg(_) => "ARG",
            InstructionKind::Expose(_) => "EXPOSE",
            InstructionKind::Volume(_) => "VOLUME",
            InstructionKind::User(_) => "USER",
            InstructionKind::Workdir(_) => "WORKDIR",
            InstructionKind::StopSignal(_) => "STOPSIGNAL",
            InstructionKind::Maintainer(_) => "MAINTAINER",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::Onbuild(_) => "ONBUILD",
        }
    }
}

/// Shell form (run through the stage's SHELL) or exec form (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellOrExec {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    #[default]
    Sandbox,
    Insecure,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub command: ShellOrExec,
    pub mounts: Vec<Mount>,
    pub network: Network,
    pub security: Security,
    /// Heredoc bodies; a shell-form command of just `<<EOF` runs the body as a script.
    pub heredocs: Vec<Heredoc>,
}

/// What COPY and ADD share: their sources, destination and file options
/// (BuildKit's `SourcesAndDest` with the flags both take).
#[derive(Debug, Clone, PartialEq)]
pub struct SourcesAndDest {
    /// Source paths (heredoc sources are in `heredocs`).
    pub sources: Vec<String>,
    /// Inline files: each becomes a file named after its delimiter in `dest`.
    pub heredocs: Vec<Heredoc>,
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    pub files: SourcesAndDest,
    /// `--from=<stage name | stage index | image>`.
    pub from: Option<String>,
    pub parents: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Add {
    pub files: SourcesAndDest,
    pub keep_git_dir: bool,
    pub checksum: Option<String>,
    /// `--unpack=<bool>`; None means: unpack local archives only.
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    Check {
        test: ShellOrExec,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}
