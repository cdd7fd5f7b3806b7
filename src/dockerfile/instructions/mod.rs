//! Typed instructions: BuildKit's `instructions.Parse`. Every instruction
//! and flag is checked here, with an error pointing at the offending word.
//! Values are kept as written; [`super::expand`] expands them per stage.
//!
//! This file splits the AST into stages and dispatches each node to its
//! `parse_*` function ([`parsers`]); the types are in [`types`], the flag
//! parser in [`flags`].

mod duration;
mod flags;
mod parsers;
pub(crate) mod suggest;
#[cfg(test)]
mod tests;
mod types;

pub use duration::parse_go_duration;
pub use types::*;

use super::error::{Error, ErrorKind};
use super::parser::{Ast, Node};
use parsers::*;

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

/// Types one instruction other than FROM.
pub fn parse_instruction(ast: &Ast, node: &Node) -> Result<Instruction, Error> {
    let kind = match node.keyword.as_str() {
        "run" => parse_run(ast, node),
        "cmd" => parse_cmd(ast, node),
        "entrypoint" => parse_entrypoint(ast, node),
        "shell" => parse_shell(ast, node),
        "copy" => parse_copy(ast, node),
        "add" => parse_add(ast, node),
        "env" => parse_env(ast, node),
        "label" => parse_label(ast, node),
        "arg" => parse_arg(ast, node),
        "expose" => parse_expose(ast, node),
        "volume" => parse_volume(ast, node),
        "user" => parse_user(ast, node),
        "workdir" => parse_workdir(ast, node),
        "stopsignal" => parse_stopsignal(ast, node),
        "maintainer" => parse_maintainer(ast, node),
        "healthcheck" => parse_healthcheck(ast, node),
        "onbuild" => parse_onbuild(ast, node),
        other => {
            let kind = ErrorKind::UnknownInstruction { name: other.to_uppercase(), suggestion: suggest::suggest(other) };
            Err(ast.error_at(node, 0, kind))
        }
    }?;
    Ok(Instruction { span: node.span, kind })
}

/// An error about `node`'s arguments, at the first of them.
fn args_error(ast: &Ast, node: &Node, message: impl Into<String>) -> Error {
    let kind = ErrorKind::Arguments { instruction: node.keyword.to_uppercase(), message: message.into() };
    let offset = if node.rest.text.is_empty() { 0 } else { node.rest.offset };
    ast.error_at(node, offset, kind)
}
