//! One `parse_*` function per instruction, as in BuildKit's
//! instructions/parse.go: each checks its node's flags and arguments and
//! returns the typed instruction, or an error pointing at the offending word.

use std::time::Duration;

use super::super::error::Error;
use super::super::parser::{Ast, Heredoc, Node};
use super::duration::parse_go_duration;
use super::flags::Flags;
use super::types::{
    Add, ArgDecl, Copy, Healthcheck, InstructionKind, KeyValue, Network, Run, Security, ShellOrExec, SourcesAndDest, Stage,
};
use super::{args_error, parse_instruction};

/// `FROM [--platform=...] <image> [AS <name>]`: starts stage `index`.
pub(super) fn parse_from(ast: &Ast, node: &Node, index: usize) -> Result<Stage, Error> {
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

pub(super) fn parse_run(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    let mut f = Flags::parse(ast, node, &["mount", "network", "security"])?;
    let mut mounts = Vec::new();
    for (spec, offset) in f.strings_at("mount") {
        let m = super::super::mount::parse(&spec, None).map_err(|msg| f.error(offset, "--mount", msg))?;
        mounts.push(m);
    }
    let network = mode(
        &mut f,
        "network",
        &[("default", Network::Default), ("none", Network::None), ("host", Network::Host)],
        "default, none or host",
    )?;
    let security =
        mode(&mut f, "security", &[("sandbox", Security::Sandbox), ("insecure", Security::Insecure)], "sandbox or insecure")?;
    if node.args.is_empty() {
        return Err(args_error(ast, node, "requires at least one argument: the command to run"));
    }
    Ok(InstructionKind::Run(Run { command: command(node), mounts, network, security, heredocs: node.heredocs.clone() }))
}

/// A `--<name>=<mode>` flag taking one of `modes` (the first is the default).
fn mode<T: std::marker::Copy>(f: &mut Flags, name: &str, modes: &[(&str, T)], expected: &str) -> Result<T, Error> {
    let Some((v, off)) = f.string_at(name)? else { return Ok(modes[0].1) };
    match modes.iter().find(|(m, _)| *m == v) {
        Some((_, mode)) => Ok(*mode),
        None => Err(f.error(off, &format!("--{name}"), format!("unsupported {name} mode {v:?}: expected {expected}"))),
    }
}

pub(super) fn parse_cmd(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    Ok(InstructionKind::Cmd(optional_command(ast, node)?))
}

pub(super) fn parse_entrypoint(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    Ok(InstructionKind::Entrypoint(optional_command(ast, node)?))
}

/// CMD's and ENTRYPOINT's command: none at all is an empty exec form.
fn optional_command(ast: &Ast, node: &Node) -> Result<ShellOrExec, Error> {
    Flags::parse(ast, node, &[])?;
    Ok(if node.args.is_empty() { ShellOrExec::Exec(Vec::new()) } else { command(node) })
}

pub(super) fn parse_shell(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    Flags::parse(ast, node, &[])?;
    if !node.json || node.args.is_empty() {
        return Err(args_error(ast, node, "requires a non-empty JSON array, e.g. SHELL [\"/bin/sh\", \"-c\"]"));
    }
    Ok(InstructionKind::Shell(node.args.clone()))
}

pub(super) fn parse_copy(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    let mut f = Flags::parse(ast, node, &["from", "chown", "chmod", "link", "parents", "exclude"])?;
    let paths = sources_and_dest(ast, node)?;
    let from = f.string("from")?;
    let files = file_options(paths, &mut f)?;
    let parents = f.bool("parents")?;
    Ok(InstructionKind::Copy(Copy { files, from, parents }))
}

pub(super) fn parse_add(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    let mut f = Flags::parse(ast, node, &["chown", "chmod", "link", "keep-git-dir", "checksum", "unpack", "exclude"])?;
    let paths = sources_and_dest(ast, node)?;
    let unpack = if f.present("unpack") { Some(f.bool("unpack")?) } else { None };
    let files = file_options(paths, &mut f)?;
    let keep_git_dir = f.bool("keep-git-dir")?;
    let checksum = f.string("checksum")?;
    Ok(InstructionKind::Add(Add { files, keep_git_dir, checksum, unpack }))
}

/// COPY's and ADD's `--chown`, `--chmod`, `--link` (read in that order)
/// and `--exclude`, over their sources and destination.
fn file_options(paths: SourcePaths, f: &mut Flags) -> Result<SourcesAndDest, Error> {
    let (sources, dest, heredocs) = paths;
    let (chown, chmod, link) = (f.string("chown")?, f.string("chmod")?, f.bool("link")?);
    Ok(SourcesAndDest { sources, heredocs, dest, chown, chmod, link, exclude: f.strings("exclude") })
}

pub(super) fn parse_env(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    Ok(InstructionKind::Env(key_values(ast, node)?))
}

pub(super) fn parse_label(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    Ok(InstructionKind::Label(key_values(ast, node)?))
}

/// ENV's and LABEL's `name=value` pairs (the parser gives them as triples).
fn key_values(ast: &Ast, node: &Node) -> Result<Vec<KeyValue>, Error> {
    Flags::parse(ast, node, &[])?;
    if node.args.is_empty() {
        return Err(args_error(ast, node, "requires at least one argument: name=value"));
    }
    let kvs: Vec<KeyValue> =
        node.args.chunks(3).map(|c| KeyValue { key: c[0].clone(), value: c.get(1).cloned().unwrap_or_default() }).collect();
    if kvs.iter().any(|kv| kv.key.is_empty()) {
        return Err(args_error(ast, node, "names can not be blank"));
    }
    Ok(kvs)
}

pub(super) fn parse_arg(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
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
    Ok(InstructionKind::Arg(decls))
}

pub(super) fn parse_expose(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    Flags::parse(ast, node, &[])?;
    if node.args.is_empty() {
        return Err(args_error(ast, node, "requires at least one argument: a port such as 80/tcp"));
    }
    Ok(InstructionKind::Expose(node.args.clone()))
}

pub(super) fn parse_volume(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    Flags::parse(ast, node, &[])?;
    if node.args.is_empty() || node.args.iter().any(|v| v.trim().is_empty()) {
        return Err(args_error(ast, node, "requires at least one non-empty path"));
    }
    Ok(InstructionKind::Volume(node.args.clone()))
}

pub(super) fn parse_user(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    one_argument(ast, node).map(InstructionKind::User)
}

pub(super) fn parse_workdir(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    one_argument(ast, node).map(InstructionKind::Workdir)
}

pub(super) fn parse_stopsignal(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    one_argument(ast, node).map(InstructionKind::StopSignal)
}

pub(super) fn parse_maintainer(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    one_argument(ast, node).map(InstructionKind::Maintainer)
}

/// The single argument of USER, WORKDIR, STOPSIGNAL and MAINTAINER.
fn one_argument(ast: &Ast, node: &Node) -> Result<String, Error> {
    Flags::parse(ast, node, &[])?;
    node.args.first().cloned().ok_or_else(|| args_error(ast, node, "requires exactly one argument"))
}

pub(super) fn parse_onbuild(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
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
    Ok(InstructionKind::Onbuild(node.rest.text.clone()))
}

pub(super) fn parse_healthcheck(ast: &Ast, node: &Node) -> Result<InstructionKind, Error> {
    let mut f = Flags::parse(ast, node, &["interval", "timeout", "start-period", "start-interval", "retries"])?;
    let Some(kind) = node.args.first() else {
        return Err(args_error(ast, node, "requires an argument: CMD <command> or NONE"));
    };
    match kind.to_uppercase().as_str() {
        "NONE" => {
            if node.args.len() > 1 {
                return Err(args_error(ast, node, "NONE takes no arguments"));
            }
            if !f.is_empty() {
                return Err(args_error(ast, node, "NONE takes no flags"));
            }
            Ok(InstructionKind::Healthcheck(Healthcheck::None))
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
            let interval = duration(&mut f, "interval")?;
            let timeout = duration(&mut f, "timeout")?;
            let start_period = duration(&mut f, "start-period")?;
            let start_interval = duration(&mut f, "start-interval")?;
            let retries = match f.string_at("retries")? {
                None => None,
                Some((v, off)) => Some(
                    v.parse::<u32>()
                        .map_err(|_| f.error(off, "--retries", format!("{v:?} is not a non-negative integer")))?,
                ),
            };
            Ok(InstructionKind::Healthcheck(Healthcheck::Check {
                test,
                interval,
                timeout,
                start_period,
                start_interval,
                retries,
            }))
        }
        other => Err(args_error(ast, node, format!("has unknown type {other:?}: expected CMD or NONE"))),
    }
}

/// A HEALTHCHECK duration flag: a Go duration, zero or at least 1ms.
fn duration(f: &mut Flags, name: &str) -> Result<Option<Duration>, Error> {
    let Some((v, off)) = f.string_at(name)? else { return Ok(None) };
    let d = parse_go_duration(&v).map_err(|m| f.error(off, &format!("--{name}"), m))?;
    if !d.is_zero() && d < Duration::from_millis(1) {
        return Err(f.error(off, &format!("--{name}"), format!("{v:?} is shorter than the minimum of 1ms")));
    }
    Ok(Some(d))
}

/// Shell form as written, or the exec form's JSON array.
fn command(node: &Node) -> ShellOrExec {
    if node.json { ShellOrExec::Exec(node.args.clone()) } else { ShellOrExec::Shell(node.rest.text.clone()) }
}

/// Source paths, destination, heredoc sources.
type SourcePaths = (Vec<String>, String, Vec<Heredoc>);

/// COPY's and ADD's sources (paths and heredocs apart) and destination.
fn sources_and_dest(ast: &Ast, node: &Node) -> Result<SourcePaths, Error> {
    let Some((dest, sources)) = node.args.split_last().filter(|(_, s)| !s.is_empty()) else {
        return Err(args_error(ast, node, "requires at least two arguments: <source>... <destination>"));
    };
    let mut paths = Vec::new();
    let mut docs = Vec::new();
    let mut remaining = node.heredocs.iter();
    for src in sources {
        let is_doc = !node.json && src.contains("<<") && super::super::parser::is_heredoc_word(src);
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
