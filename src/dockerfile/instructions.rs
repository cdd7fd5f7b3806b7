//! Typed instructions: BuildKit's `instructions.Parse`. Every instruction
//! and flag is checked here, with an error pointing at the offending word.
//! Values are kept as written; [`super::expand`] expands them per stage.

use std::time::Duration;

use super::error::{Error, ErrorKind, Span};
use super::mount::Mount;
use super::parser::{Ast, Directives, Heredoc, Node, Warning};

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

#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    /// Source paths (heredoc sources are in `heredocs`).
    pub sources: Vec<String>,
    pub dest: String,
    /// `--from=<stage name | stage index | image>`.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
    /// Inline files: each becomes a file named after its delimiter in `dest`.
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Add {
    pub sources: Vec<String>,
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub keep_git_dir: bool,
    pub checksum: Option<String>,
    /// `--unpack=<bool>`; None means: unpack local archives only.
    pub unpack: Option<bool>,
    pub exclude: Vec<String>,
    pub heredocs: Vec<Heredoc>,
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

const INSTRUCTIONS: [&str; 18] = [
    "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck", "label", "maintainer", "onbuild",
    "run", "shell", "stopsignal", "user", "volume", "workdir",
];

/// Parses Dockerfile text into stages and typed instructions.
pub fn parse(src: &str) -> Result<Dockerfile, Error> {
    let ast = super::parser::parse(src)?;
    from_ast(&ast)
}

/// Types an already parsed AST.
pub fn from_ast(ast: &Ast) -> Result<Dockerfile, Error> {
    let mut df = Dockerfile {
        directives: ast.directives.clone(),
        global_args: Vec::new(),
        stages: Vec::new(),
        warnings: ast.warnings.clone(),
        source: ast.lines.clone(),
    };
    for node in &ast.nodes {
        if node.keyword == "from" {
            let stage = parse_from(ast, node, df.stages.len())?;
            if let Some(name) = &stage.name {
                if df.stage_by_name(name).is_some() {
                    let kind = ErrorKind::Stage(format!("duplicate stage name {name:?}: stage names must be unique"));
                    return Err(ast.error_at(node, node.rest.offset, kind));
                }
            }
            df.stages.push(stage);
            continue;
        }
        let instr = parse_instruction(ast, node)?;
        match df.stages.last_mut() {
            Some(stage) => stage.instructions.push(instr),
            None => match instr.kind {
                InstructionKind::Arg(args) => df.global_args.extend(args),
                other => {
                    let kind = ErrorKind::Stage(format!(
                        "{} before the first FROM: only ARG may come before FROM (no build stage in current context)",
                        other.keyword()
                    ));
                    return Err(ast.error_at(node, 0, kind));
                }
            },
        }
    }
    if df.stages.is_empty() {
        let line = ast.lines.len();
        let kind = ErrorKind::Stage("the Dockerfile has no FROM instruction, so it defines no build stage".into());
        return Err(Error::new(kind, super::Pos { line, col: 1 }, ast.line(line)));
    }
    Ok(df)
}

/// Parses an ONBUILD trigger stored in a base image's config, to run at
/// the start of a stage built on that image.
pub fn parse_trigger(expression: &str, escape: char) -> Result<Instruction, Error> {
    let prefix = if escape == '\\' { String::new() } else { format!("# escape={escape}\n") };
    let ast = super::parser::parse(&format!("{prefix}{expression}\n"))?;
    match ast.nodes.as_slice() {
        [node] if !matches!(node.keyword.as_str(), "from" | "onbuild" | "maintainer") => parse_instruction(&ast, node),
        [node] => Err(args_error(&ast, node, "is not allowed as an ONBUILD trigger")),
        _ => Err(Error::new(
            ErrorKind::Syntax(format!("ONBUILD trigger {expression:?} is not exactly one instruction")),
            super::Pos::default(),
            "",
        )),
    }
}

fn args_error(ast: &Ast, node: &Node, message: impl Into<String>) -> Error {
    let kind = ErrorKind::Arguments { instruction: node.keyword.to_uppercase(), message: message.into() };
    let offset = if node.rest.text.is_empty() { 0 } else { node.rest.offset };
    ast.error_at(node, offset, kind)
}

fn parse_from(ast: &Ast, node: &Node, index: usize) -> Result<Stage, Error> {
    let mut flags = Flags::parse(ast, node, &["platform"])?;
    let platform = flags.string("platform")?;
    let (base, name) = match node.args.as_slice() {
        [base] => (base.clone(), None),
        [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let name = name.to_lowercase();
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(args_error(
                    ast,
                    node,
                    format!("has an invalid stage name {name:?}: expected a letter followed by letters, digits, '-', '_' or '.'"),
                ));
            }
            (base.clone(), Some(name))
        }
        _ => return Err(args_error(ast, node, "requires either one or three arguments: FROM <image> [AS <name>]")),
    };
    Ok(Stage { index, name, base, platform, span: node.span, instructions: Vec::new() })
}

/// Types one instruction other than FROM.
pub fn parse_instruction(ast: &Ast, node: &Node) -> Result<Instruction, Error> {
    let kind = match node.keyword.as_str() {
        "run" => {
            let mut f = Flags::parse(ast, node, &["mount", "network", "security"])?;
            let mut mounts = Vec::new();
            for (spec, offset) in f.strings_at("mount") {
                let m = super::mount::parse(&spec, None)
                    .map_err(|msg| ast.error_at(node, offset, bad_flag(node, "--mount", msg)))?;
                mounts.push(m);
            }
            let network = match f.string_at("network")? {
                None => Network::Default,
                Some((v, off)) => match v.as_str() {
                    "default" => Network::Default,
                    "none" => Network::None,
                    "host" => Network::Host,
                    _ => {
                        let msg = format!("unsupported network mode {v:?}: expected default, none or host");
                        return Err(ast.error_at(node, off, bad_flag(node, "--network", msg)));
                    }
                },
            };
            let security = match f.string_at("security")? {
                None => Security::Sandbox,
                Some((v, off)) => match v.as_str() {
                    "sandbox" => Security::Sandbox,
                    "insecure" => Security::Insecure,
                    _ => {
                        let msg = format!("unsupported security mode {v:?}: expected sandbox or insecure");
                        return Err(ast.error_at(node, off, bad_flag(node, "--security", msg)));
                    }
                },
            };
            if node.args.is_empty() {
                return Err(args_error(ast, node, "requires at least one argument: the command to run"));
            }
            InstructionKind::Run(Run { command: command(node), mounts, network, security, heredocs: node.heredocs.clone() })
        }
        "cmd" | "entrypoint" => {
            Flags::parse(ast, node, &[])?;
            let cmd = if node.args.is_empty() { ShellOrExec::Exec(Vec::new()) } else { command(node) };
            if node.keyword == "cmd" { InstructionKind::Cmd(cmd) } else { InstructionKind::Entrypoint(cmd) }
        }
        "shell" => {
            Flags::parse(ast, node, &[])?;
            if !node.json || node.args.is_empty() {
                return Err(args_error(ast, node, "requires a non-empty JSON array, e.g. SHELL [\"/bin/sh\", \"-c\"]"));
            }
            InstructionKind::Shell(node.args.clone())
        }
        "copy" => {
            let mut f = Flags::parse(ast, node, &["from", "chown", "chmod", "link", "parents", "exclude"])?;
            let (sources, dest, heredocs) = sources_and_dest(ast, node)?;
            InstructionKind::Copy(Copy {
                sources,
                dest,
                from: f.string("from")?,
                chown: f.string("chown")?,
                chmod: f.string("chmod")?,
                link: f.bool("link")?,
                parents: f.bool("parents")?,
                exclude: f.strings_at("exclude").into_iter().map(|(s, _)| s).collect(),
                heredocs,
            })
        }
        "add" => {
            let mut f =
                Flags::parse(ast, node, &["chown", "chmod", "link", "keep-git-dir", "checksum", "unpack", "exclude"])?;
            let (sources, dest, heredocs) = sources_and_dest(ast, node)?;
            let unpack = if f.present("unpack") { Some(f.bool("unpack")?) } else { None };
            InstructionKind::Add(Add {
                sources,
                dest,
                chown: f.string("chown")?,
                chmod: f.string("chmod")?,
                link: f.bool("link")?,
                keep_git_dir: f.bool("keep-git-dir")?,
                checksum: f.string("checksum")?,
                unpack,
                exclude: f.strings_at("exclude").into_iter().map(|(s, _)| s).collect(),
                heredocs,
            })
        }
        "env" | "label" => {
            Flags::parse(ast, node, &[])?;
            if node.args.is_empty() {
                return Err(args_error(ast, node, "requires at least one argument: name=value"));
            }
            let kvs: Vec<KeyValue> = node
                .args
                .chunks(3)
                .map(|c| KeyValue { key: c[0].clone(), value: c.get(1).cloned().unwrap_or_default() })
                .collect();
            if kvs.iter().any(|kv| kv.key.is_empty()) {
                return Err(args_error(ast, node, "names can not be blank"));
            }
            if node.keyword == "env" { InstructionKind::Env(kvs) } else { InstructionKind::Label(kvs) }
        }
        "arg" => {
            Flags::parse(ast, node, &[])?;
            if node.args.is_empty() {
                return Err(args_error(ast, node, "requires at least one argument: name[=default]"));
            }
            let mut decls = Vec::new();
            for word in &node.args {
                let (name, default) = match word.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (word.clone(), None),
                };
                if name.is_empty() {
                    return Err(args_error(ast, node, "names can not be blank"));
                }
                decls.push(ArgDecl { name, default, span: node.span });
            }
            InstructionKind::Arg(decls)
        }
        "expose" => {
            Flags::parse(ast, node, &[])?;
            if node.args.is_empty() {
                return Err(args_error(ast, node, "requires at least one argument: a port such as 80/tcp"));
            }
            InstructionKind::Expose(node.args.clone())
        }
        "volume" => {
            Flags::parse(ast, node, &[])?;
            if node.args.is_empty() || node.args.iter().any(|v| v.trim().is_empty()) {
                return Err(args_error(ast, node, "requires at least one non-empty path"));
            }
            InstructionKind::Volume(node.args.clone())
        }
        "user" | "workdir" | "stopsignal" | "maintainer" => {
            Flags::parse(ast, node, &[])?;
            let Some(value) = node.args.first().cloned() else {
                return Err(args_error(ast, node, "requires exactly one argument"));
            };
            match node.keyword.as_str() {
                "user" => InstructionKind::User(value),
                "workdir" => InstructionKind::Workdir(value),
                "stopsignal" => InstructionKind::StopSignal(value),
                _ => InstructionKind::Maintainer(value),
            }
        }
        "healthcheck" => InstructionKind::Healthcheck(parse_healthcheck(ast, node)?),
        "onbuild" => {
            Flags::parse(ast, node, &[])?;
            let Some(sub) = &node.onbuild else {
                return Err(args_error(ast, node, "requires at least one argument: the trigger instruction"));
            };
            match sub.keyword.as_str() {
                "onbuild" => return Err(args_error(ast, node, "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")),
                "from" | "maintainer" => {
                    return Err(args_error(ast, node, format!("{} isn't allowed as an ONBUILD trigger", sub.keyword.to_uppercase())))
                }
                _ => {}
            }
            parse_instruction(ast, sub)?;
            InstructionKind::Onbuild(node.rest.text.clone())
        }
        other => {
            let upper = other.to_uppercase();
            let suggestion = INSTRUCTIONS
                .iter()
                .map(|k| (edit_distance(other, k), k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| k.to_uppercase());
            return Err(ast.error_at(node, 0, ErrorKind::UnknownInstruction { name: upper, suggestion }));
        }
    };
    Ok(Instruction { span: node.span, kind })
}

fn bad_flag(node: &Node, flag: &str, message: String) -> ErrorKind {
    ErrorKind::BadFlag { instruction: node.keyword.to_uppercase(), flag: flag.to_string(), message }
}

fn command(node: &Node) -> ShellOrExec {
    if node.json { ShellOrExec::Exec(node.args.clone()) } else { ShellOrExec::Shell(node.rest.text.clone()) }
}

type SourcesAndDest = (Vec<String>, String, Vec<Heredoc>);

fn sources_and_dest(ast: &Ast, node: &Node) -> Result<SourcesAndDest, Error> {
    let Some((dest, sources)) = node.args.split_last().filter(|(_, s)| !s.is_empty()) else {
        return Err(args_error(ast, node, "requires at least two arguments: <source>... <destination>"));
    };
    let mut paths = Vec::new();
    let mut docs = Vec::new();
    let mut remaining = node.heredocs.iter();
    for src in sources {
        let is_doc = !node.json && src.contains("<<") && super::parser::is_heredoc_word(src);
        match remaining.clone().next() {
            Some(doc) if is_doc => {
                remaining.next();
                docs.push(doc.clone());
            }
            _ => paths.push(src.clone()),
        }
    }
    Ok((paths, dest.clone(), docs))
}

fn parse_healthcheck(ast: &Ast, node: &Node) -> Result<Healthcheck, Error> {
    let mut f = Flags::parse(ast, node, &["interval", "timeout", "start-period", "start-interval", "retries"])?;
    let Some(kind) = node.args.first() else {
        return Err(args_error(ast, node, "requires an argument: CMD <command> or NONE"));
    };
    match kind.to_uppercase().as_str() {
        "NONE" => {
            if node.args.len() > 1 {
                return Err(args_error(ast, node, "NONE takes no arguments"));
            }
            if !f.items.is_empty() {
                return Err(args_error(ast, node, "NONE takes no flags"));
            }
            Ok(Healthcheck::None)
        }
        "CMD" => {
            let test = if node.json {
                ShellOrExec::Exec(node.args[1..].to_vec())
            } else {
                match node.args.get(1) {
                    Some(c) => ShellOrExec::Shell(c.clone()),
                    None => return Err(args_error(ast, node, "CMD is missing the command to run")),
                }
            };
            if matches!(&test, ShellOrExec::Exec(v) if v.is_empty()) {
                return Err(args_error(ast, node, "CMD is missing the command to run"));
            }
            let mut duration = |name: &str| -> Result<Option<Duration>, Error> {
                let Some((v, off)) = f.string_at(name)? else { return Ok(None) };
                let d = parse_go_duration(&v).map_err(|m| ast.error_at(node, off, bad_flag(node, &format!("--{name}"), m)))?;
                if !d.is_zero() && d < Duration::from_millis(1) {
                    let m = format!("{v:?} is shorter than the minimum of 1ms");
                    return Err(ast.error_at(node, off, bad_flag(node, &format!("--{name}"), m)));
                }
                Ok(Some(d))
            };
            let interval = duration("interval")?;
            let timeout = duration("timeout")?;
            let start_period = duration("start-period")?;
            let start_interval = duration("start-interval")?;
            let retries = match f.string_at("retries")? {
                None => None,
                Some((v, off)) => Some(v.parse::<u32>().map_err(|_| {
                    ast.error_at(node, off, bad_flag(node, "--retries", format!("{v:?} is not a non-negative integer")))
                })?),
            };
            Ok(Healthcheck::Check { test, interval, timeout, start_period, start_interval, retries })
        }
        other => Err(args_error(ast, node, format!("has unknown type {other:?}: expected CMD or NONE"))),
    }
}

/// Go's `time.ParseDuration` (no negative values: they make no sense here).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 30s, 1m30s or 500ms");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += num * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// BuildKit's `BFlags`: `--name=value` or `--name` for booleans.
struct Flags<'a> {
    ast: &'a Ast,
    node: &'a Node,
    /// (name, value if `=` was given, offset)
    items: Vec<(String, Option<String>, usize)>,
}

impl<'a> Flags<'a> {
    fn parse(ast: &'a Ast, node: &'a Node, allowed: &[&str]) -> Result<Self, Error> {
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

    fn present(&self, name: &str) -> bool {
        self.items.iter().any(|(n, _, _)| n == name)
    }

    fn string_at(&mut self, name: &str) -> Result<Option<(String, usize)>, Error> {
        let Some((_, value, off)) = self.items.iter().find(|(n, _, _)| n == name) else { return Ok(None) };
        match value {
            Some(v) => Ok(Some((v.clone(), *off))),
            None => {
                let kind = bad_flag(self.node, &format!("--{name}"), "is missing a value: expected --name=value".into());
                Err(self.ast.error_at(self.node, *off, kind))
            }
        }
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.string_at(name)?.map(|(v, _)| v))
    }

    fn strings_at(&mut self, name: &str) -> Vec<(String, usize)> {
        self.items.iter().filter(|(n, _, _)| n == name).map(|(_, v, o)| (v.clone().unwrap_or_default(), *o)).collect()
    }

    fn bool(&mut self, name: &str) -> Result<bool, Error> {
        let Some((_, value, off)) = self.items.iter().find(|(n, _, _)| n == name) else { return Ok(false) };
        match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => {
                let kind = bad_flag(self.node, &format!("--{name}"), format!("expects true or false, not {other:?}"));
                Err(self.ast.error_at(self.node, *off, kind))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::mount::MountType;
    use crate::dockerfile::Pos;

    fn one(src: &str) -> InstructionKind {
        let df = parse(&format!("FROM base\n{src}\n")).unwrap();
        df.stages[0].instructions[0].kind.clone()
    }

    fn err(src: &str) -> Error {
        parse(src).unwrap_err()
    }

    #[test]
    fn from_forms() {
        let df = parse("FROM --platform=linux/arm64 alpine:3 AS Build\nFROM build\nFROM scratch").unwrap();
        let s = &df.stages[0];
        assert_eq!((s.name.as_deref(), s.base.as_str(), s.platform.as_deref()), (Some("build"), "alpine:3", Some("linux/arm64")));
        assert_eq!(df.stages[1].index, 1);
        assert_eq!(df.stages[2].base, "scratch");
        assert!(err("FROM a AS 1x").to_string().contains("invalid stage name"));
        assert!(err("FROM a b").to_string().contains("one or three arguments"));
        assert!(err("FROM a AS x\nFROM b AS X").to_string().contains("duplicate stage name"));
        assert!(err("FROM --plat=x a").to_string().contains("unknown flag --plat"));
    }

    #[test]
    fn run_forms_and_flags() {
        match one("RUN --mount=type=cache,target=/c --mount=type=secret,id=s --network=none --security=insecure make all") {
            InstructionKind::Run(r) => {
                assert_eq!(r.command, ShellOrExec::Shell("make all".into()));
                assert_eq!(r.mounts.iter().map(|m| m.kind).collect::<Vec<_>>(), vec![MountType::Cache, MountType::Secret]);
                assert_eq!((r.network, r.security), (Network::None, Security::Insecure));
            }
            other => panic!("{other:?}"),
        }
        match one("RUN [\"/bin/echo\", \"a b\"]") {
            InstructionKind::Run(r) => {
                assert_eq!(r.command, ShellOrExec::Exec(vec!["/bin/echo".into(), "a b".into()]));
                assert_eq!((r.network, r.security), (Network::Default, Security::Sandbox));
            }
            other => panic!("{other:?}"),
        }
        match one("RUN --network=host [\"a\", 'b']") {
            InstructionKind::Run(r) => assert_eq!(r.command, ShellOrExec::Shell("[\"a\", 'b']".into()), "bad JSON falls back"),
            other => panic!("{other:?}"),
        }
        match one("RUN <<EOF\nset -e\necho hi\nEOF") {
            InstructionKind::Run(r) => {
                assert_eq!(r.command, ShellOrExec::Shell("<<EOF".into()));
                assert_eq!(r.heredocs[0].content, "set -e\necho hi\n");
            }
            other => panic!("{other:?}"),
        }
        assert!(err("FROM a\nRUN --network=bridge x").to_string().contains("unsupported network mode"));
        assert!(err("FROM a\nRUN --security=x y").to_string().contains("unsupported security mode"));
        assert!(err("FROM a\nRUN --mount=type=cache x").to_string().contains("needs a target"));
        assert!(err("FROM a\nRUN").to_string().contains("RUN requires at least one argument"));
        assert!(err("FROM a\nRUN [\"a\", 1]").to_string().contains("must all be strings"));
        assert!(err("FROM a\nRUN --network x").to_string().contains("missing a value"));
    }

    #[test]
    fn cmd_entrypoint_shell() {
        assert_eq!(one("CMD [\"a\"]"), InstructionKind::Cmd(ShellOrExec::Exec(vec!["a".into()])));
        assert_eq!(one("CMD a b"), InstructionKind::Cmd(ShellOrExec::Shell("a b".into())));
        assert_eq!(one("CMD"), InstructionKind::Cmd(ShellOrExec::Exec(vec![])));
        assert_eq!(one("ENTRYPOINT [\"/e\", \"-x\"]"), InstructionKind::Entrypoint(ShellOrExec::Exec(vec!["/e".into(), "-x".into()])));
        assert_eq!(one("ENTRYPOINT exec x"), InstructionKind::Entrypoint(ShellOrExec::Shell("exec x".into())));
        assert_eq!(one("SHELL [\"/bin/bash\", \"-c\"]"), InstructionKind::Shell(vec!["/bin/bash".into(), "-c".into()]));
        assert!(err("FROM a\nSHELL /bin/bash -c").to_string().contains("JSON array"));
        assert!(err("FROM a\nCMD --x a").to_string().contains("unknown flag --x for CMD (it takes no flags)"));
    }

    #[test]
    fn copy_and_add() {
        match one("COPY --from=build --chown=1:2 --chmod=0644 --link --parents --exclude=*.tmp --exclude=.git a b /dst/") {
            InstructionKind::Copy(c) => {
                assert_eq!(c.sources, vec!["a", "b"]);
                assert_eq!(c.dest, "/dst/");
                assert_eq!((c.from.as_deref(), c.chown.as_deref(), c.chmod.as_deref()), (Some("build"), Some("1:2"), Some("0644")));
                assert!(c.link && c.parents);
                assert_eq!(c.exclude, vec!["*.tmp", ".git"]);
            }
            other => panic!("{other:?}"),
        }
        match one("COPY --link=false [\"a b\", \"/d\"]") {
            InstructionKind::Copy(c) => assert_eq!((c.sources.clone(), c.link, c.parents), (vec!["a b".to_string()], false, false)),
            other => panic!("{other:?}"),
        }
        match one("COPY <<one.txt src << <<-two.txt /d/\n1\none.txt\n\t2\n\ttwo.txt") {
            InstructionKind::Copy(c) => {
                assert_eq!(c.sources, vec!["src", "<<"], "a bare << is not a heredoc");
                assert_eq!(c.heredocs.iter().map(|h| (h.name.as_str(), h.content.as_str())).collect::<Vec<_>>(), vec![("one.txt", "1\n"), ("two.txt", "2\n")]);
            }
            other => panic!("{other:?}"),
        }
        match one("ADD --checksum=sha256:abc --keep-git-dir --chown=u --chmod=600 --link --unpack=false --exclude=x https://e/x.tgz /d") {
            InstructionKind::Add(a) => {
                assert_eq!(a.checksum.as_deref(), Some("sha256:abc"));
                assert!(a.keep_git_dir && a.link);
                assert_eq!(a.unpack, Some(false));
                assert_eq!((a.chown.as_deref(), a.chmod.as_deref(), a.exclude.clone()), (Some("u"), Some("600"), vec!["x".to_string()]));
            }
            other => panic!("{other:?}"),
        }
        assert!(err("FROM a\nCOPY x").to_string().contains("at least two arguments"));
        assert!(err("FROM a\nCOPY --from=a --from=b x y").to_string().contains("more than once"));
        assert!(err("FROM a\nCOPY --link=maybe x y").to_string().contains("expects true or false"));
        assert!(err("FROM a\nADD --from=x a b").to_string().contains("unknown flag --from for ADD"));
    }

    #[test]
    fn env_label_arg() {
        let kv = |k: &str, v: &str| KeyValue { key: k.into(), value: v.into() };
        assert_eq!(one("ENV A=1 B=\"two words\""), InstructionKind::Env(vec![kv("A", "1"), kv("B", "\"two words\"")]));
        assert_eq!(one("ENV LEGACY the rest"), InstructionKind::Env(vec![kv("LEGACY", "the rest")]));
        assert_eq!(one("LABEL a.b=c \"d e\"=f"), InstructionKind::Label(vec![kv("a.b", "c"), kv("\"d e\"", "f")]));
        match one("ARG A B=2 C=") {
            InstructionKind::Arg(a) => assert_eq!(
                a.iter().map(|d| (d.name.as_str(), d.default.as_deref())).collect::<Vec<_>>(),
                vec![("A", None), ("B", Some("2")), ("C", Some(""))]
            ),
            other => panic!("{other:?}"),
        }
        assert!(err("FROM a\nENV A").to_string().contains("ENV must have two arguments"));
        assert!(err("FROM a\nENV A=1 B").to_string().contains("can't find ="));
        assert!(err("FROM a\nARG =x").to_string().contains("names can not be blank"));
        assert!(err("FROM a\nLABEL").to_string().contains("LABEL requires at least one argument"));
        let df = parse("ARG V=1\nARG W\nFROM a:$V").unwrap();
        assert_eq!(df.global_args.len(), 2);
    }

    #[test]
    fn simple_instructions() {
        assert_eq!(one("EXPOSE 80 443/tcp 53/udp"), InstructionKind::Expose(vec!["80".into(), "443/tcp".into(), "53/udp".into()]));
        assert_eq!(one("VOLUME /a /b"), InstructionKind::Volume(vec!["/a".into(), "/b".into()]));
        assert_eq!(one("VOLUME [\"/a b\"]"), InstructionKind::Volume(vec!["/a b".into()]));
        assert_eq!(one("USER app:app"), InstructionKind::User("app:app".into()));
        assert_eq!(one("WORKDIR /srv/app dir"), InstructionKind::Workdir("/srv/app dir".into()));
        assert_eq!(one("STOPSIGNAL SIGTERM"), InstructionKind::StopSignal("SIGTERM".into()));
        assert_eq!(one("MAINTAINER me <me@x>"), InstructionKind::Maintainer("me <me@x>".into()));
        assert_eq!(one("ONBUILD RUN make"), InstructionKind::Onbuild("RUN make".into()));
        assert!(err("FROM a\nWORKDIR").to_string().contains("exactly one argument"));
        assert!(err("FROM a\nEXPOSE").to_string().contains("EXPOSE requires"));
        assert!(err("FROM a\nONBUILD ONBUILD RUN x").to_string().contains("chaining ONBUILD"));
        assert!(err("FROM a\nONBUILD FROM x").to_string().contains("isn't allowed as an ONBUILD trigger"));
        assert!(err("FROM a\nONBUILD COPY x").to_string().contains("COPY requires at least two"));
    }

    #[test]
    fn onbuild_triggers_from_image_config() {
        let i = parse_trigger("RUN make install", '\\').unwrap();
        assert_eq!(i.kind, InstructionKind::Run(Run {
            command: ShellOrExec::Shell("make install".into()),
            mounts: vec![],
            network: Network::Default,
            security: Security::Sandbox,
            heredocs: vec![],
        }));
        assert!(parse_trigger("FROM x", '\\').is_err());
        assert!(parse_trigger("COPY a", '\\').is_err());
    }

    #[test]
    fn healthcheck() {
        assert_eq!(one("HEALTHCHECK NONE"), InstructionKind::Healthcheck(Healthcheck::None));
        assert_eq!(
            one("HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=0s --start-interval=2s --retries=3 CMD curl -f x"),
            InstructionKind::Healthcheck(Healthcheck::Check {
                test: ShellOrExec::Shell("curl -f x".into()),
                interval: Some(Duration::from_secs(90)),
                timeout: Some(Duration::from_millis(500)),
                start_period: Some(Duration::ZERO),
                start_interval: Some(Duration::from_secs(2)),
                retries: Some(3),
            })
        );
        match one("HEALTHCHECK CMD [\"/check\"]") {
            InstructionKind::Healthcheck(Healthcheck::Check { test, interval, .. }) => {
                assert_eq!((test, interval), (ShellOrExec::Exec(vec!["/check".into()]), None))
            }
            other => panic!("{other:?}"),
        }
        assert!(err("FROM a\nHEALTHCHECK CMD").to_string().contains("missing the command"));
        assert!(err("FROM a\nHEALTHCHECK NONE x").to_string().contains("NONE takes no arguments"));
        assert!(err("FROM a\nHEALTHCHECK CONNECT x").to_string().contains("unknown type"));
        assert!(err("FROM a\nHEALTHCHECK --interval=5 CMD x").to_string().contains("invalid duration"));
        assert!(err("FROM a\nHEALTHCHECK --interval=1us CMD x").to_string().contains("minimum of 1ms"));
        assert!(err("FROM a\nHEALTHCHECK --retries=-1 CMD x").to_string().contains("non-negative"));
    }

    #[test]
    fn stage_structure() {
        assert!(err("RUN x\nFROM a").to_string().contains("before the first FROM"));
        assert!(err("ARG A\n").to_string().contains("no FROM"));
        assert!(matches!(*err("").kind, ErrorKind::NoInstructions));
        assert!(matches!(*err("# just a comment\n\n").kind, ErrorKind::NoInstructions));
    }

    #[test]
    fn error_messages_show_line_column_and_caret() {
        let e = err("FROM alpine\nRUN echo ok\nCOPY --chwon=1 a b\n").in_file("app/Dockerfile");
        assert_eq!(e.pos, Pos { line: 3, col: 6 });
        assert_eq!(
            e.to_string(),
            "app/Dockerfile:3:6: unknown flag --chwon for COPY (expected one of --from, --chown, --chmod, --link, --parents, --exclude)\n \
             3 | COPY --chwon=1 a b\n   |      ^"
        );
        let e = err("FROM a\n  RUNN x\n");
        assert_eq!(e.to_string(), "Dockerfile:2:3: unknown instruction: RUNN (did you mean RUN?)\n 2 |   RUNN x\n   |   ^");
        // A flag on a continuation line is reported where it is.
        let e = err("FROM a\nRUN --network=host \\\n    --mount=type=nfs,target=/x \\\n    true\n");
        assert_eq!(e.pos, Pos { line: 3, col: 5 });
        assert!(e.to_string().ends_with(" 3 |     --mount=type=nfs,target=/x \\\n   |     ^"), "{e}");
        let e = err("FROM a\nRUN <<EOF\necho\n");
        assert!(e.to_string().contains("Dockerfile:2:1: unterminated heredoc"), "{e}");
        let e = err("FROM a\nENV X\n");
        assert_eq!(e.pos, Pos { line: 2, col: 5 });
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1h2m3.5s").unwrap(), Duration::from_millis(3_723_500));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "5", "1x", "-1s", "s", "1..5s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
