//! `kiln build --call targets|outline|check` (and `--check`): buildx's
//! frontend subrequests. They read the Dockerfile only: nothing is built, no
//! VM starts. The text output follows buildx's (BuildKit's subrequest
//! printers), exit codes too (`check` fails when a check does).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::dockerfile::expand::{BuildOptions, Evaluator};
use crate::dockerfile::lint::{self, CheckConfig};
use crate::dockerfile::mount::MountType;
use crate::dockerfile::parser::{self, Ast, Node};
use crate::dockerfile::{instructions, stages, InstructionKind};
use super::tabwriter::tabwrite;
use crate::platform::Platform;

/// What `kiln build` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Build,
    Check,
    Outline,
    Targets,
}

impl Call {
    /// `--call VALUE` / `--check`, as buildx reads them (`lint` is BuildKit's name for `check`).
    pub fn from_flags(call: Option<&str>, check: bool) -> anyhow::Result<Call> {
        if check {
            return Ok(Call::Check);
        }
        if let Some((method, options)) = call.and_then(|c| c.split_once(',')) {
            bail!("--call {method},{options}: options such as format=json are not supported; kiln prints buildx's text format");
        }
        match call.map(|c| c.trim().to_lowercase()).as_deref() {
            None | Some("build") => Ok(Call::Build),
            Some("check" | "lint") => Ok(Call::Check),
            Some("outline") => Ok(Call::Outline),
            Some("targets") => Ok(Call::Targets),
            Some(other) => bail!("--call {other}: unknown method; expected build, check, outline or targets"),
        }
    }
}

/// Runs a `--call` other than `build` on the Dockerfile at `dockerfile`.
pub fn run(call: Call, dockerfile: &Path, target: Option<&str>, build_args: &BTreeMap<String, String>) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(dockerfile).with_context(|| format!("cannot read the Dockerfile {}", dockerfile.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let ast = parser::parse(&text).map_err(|e| e.in_file(dockerfile))?;
    let (out, code) = match call {
        Call::Build => unreachable!("a build is not a subrequest"),
        Call::Targets => (targets(&ast).map_err(|e| e.in_file(dockerfile))?, 0),
        Call::Outline => (outline(&ast, target, build_args).map_err(|e| e.in_file(dockerfile))?, 0),
        Call::Check => {
            let name = dockerfile.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "Dockerfile".into());
            check(&ast, &text, &name, build_args)?
        }
    };
    print!("{out}");
    Ok(ExitCode::from(code))
}

/// BuildKit's description of a stage or ARG: the comment line above it that
/// starts with its name and a space.
fn description(node: &Node, name: &str) -> String {
    let prefix = format!("{name} ");
    node.comments.iter().find_map(|c| c.strip_prefix(&prefix)).unwrap_or("").to_string()
}

fn from_nodes(ast: &Ast) -> impl Iterator<Item = &Node> {
    ast.nodes.iter().filter(|n| n.keyword == "from")
}

/// `--call targets`: every stage, the default (last) one marked.
fn targets(ast: &Ast) -> Result<String, crate::dockerfile::Error> {
    let df = instructions::from_ast(ast)?;
    let mut rows = vec![vec!["TARGET".to_string(), "DESCRIPTION".to_string()]];
    for (stage, node) in df.stages.iter().zip(from_nodes(ast)) {
        let is_default = stage.index + 1 == df.stages.len();
        let name = stage.name.clone().unwrap_or_default();
        let label = match (name.is_empty(), is_default) {
            (true, true) => "(default)".to_string(),
            (false, true) => format!("{name} (default)"),
            _ => name.clone(),
        };
        rows.push(vec![label, description(node, &name)]);
    }
    Ok(tabwrite(&rows, 1, 0))
}

/// `--call outline`: the target's stage, the build args it reads, and the
/// secrets and ssh agents its RUNs mount.
fn outline(ast: &Ast, target: Option<&str>, build_args: &BTreeMap<String, String>) -> Result<String, crate::dockerfile::Error> {
    let df = instructions::from_ast(ast)?;
    let opts = BuildOptions { build_args: build_args.clone(), ..BuildOptions::new(Platform::host()) };
    let eval = Evaluator::new(&df, &opts)?;
    let graph = stages::resolve(&eval, target)?;
    let node_at = |line: usize| ast.nodes.iter().find(|n| n.span.start.line == line);
    let escape = df.directives.escape;

    // (line, name, value, description); an ARG counts where it is first declared.
    let mut args: Vec<(usize, String, String, String)> = Vec::new();
    // A stage's `ARG NAME` without a comment of its own takes the global declaration's.
    let arg_description = |line: usize, name: &str| -> String {
        let own = node_at(line).map(|n| description(n, name)).unwrap_or_default();
        let global = || df.global_args.iter().find(|a| a.name == name).and_then(|a| node_at(a.span.start.line));
        if own.is_empty() { global().map(|n| description(n, name)).unwrap_or_default() } else { own }
    };
    let mut add_arg = |line: usize, name: &str, value: String| {
        if !args.iter().any(|a| a.1 == name) && !lint::is_builtin_arg(name) {
            args.push((line, name.to_string(), value, arg_description(line, name)));
        }
    };
    let global_value = |name: &str| -> String {
        let default = df.global_args.iter().rev().find(|a| a.name == name).and_then(|a| a.default.clone());
        build_args.get(name).cloned().or(default).unwrap_or_default()
    };
    let mut secrets: Vec<(String, bool)> = Vec::new();
    let mut ssh: Vec<(String, bool)> = Vec::new();
    for &i in &graph.order {
        let stage = &df.stages[i];
        let mut from_words = vec![stage.base.as_str()];
        from_words.extend(stage.platform.as_deref());
        for word in from_words {
            for var in lint::referenced_vars(word, escape) {
                if let Some(decl) = df.global_args.iter().find(|a| a.name == var) {
                    add_arg(decl.span.start.line, &var, global_value(&var));
                }
            }
        }
        for instr in &stage.instructions {
            match &instr.kind {
                InstructionKind::Arg(decls) => {
                    for d in decls {
                        let value = match (build_args.get(&d.name), &d.default) {
                            (Some(v), _) => v.clone(),
                            (None, Some(v)) => v.clone(),
                            // `ARG NAME` in a stage takes the global default.
                            (None, None) => global_value(&d.name),
                        };
                        add_arg(d.span.start.line, &d.name, value);
                    }
                }
                InstructionKind::Run(run) => {
                    for m in &run.mounts {
                        let (list, id) = match m.kind {
                            MountType::Secret => (&mut secrets, m.secret_id()),
                            MountType::Ssh => (&mut ssh, m.ssh_id()),
                            _ => continue,
                        };
                        match list.iter_mut().find(|(n, _)| *n == id) {
                            Some(entry) => entry.1 |= m.required,
                            None => list.push((id, m.required)),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    args.sort_by_key(|a| a.0);

    let mut out = String::new();
    let stage = &df.stages[graph.target];
    let name = stage.name.clone().unwrap_or_default();
    let desc = from_nodes(ast).nth(graph.target).map(|n| description(n, &name)).unwrap_or_default();
    if !name.is_empty() || !desc.is_empty() {
        let mut rows = vec![vec!["TARGET:".to_string(), if name.is_empty() { "(default)".into() } else { name }]];
        if !desc.is_empty() {
            rows.push(vec!["DESCRIPTION:".into(), desc]);
        }
        out += &tabwrite(&rows, 1, 0);
        out.push('\n');
    }
    if !args.is_empty() {
        let mut rows = vec![vec!["BUILD ARG".to_string(), "VALUE".into(), "DESCRIPTION".into()]];
        rows.extend(args.into_iter().map(|(_, n, v, d)| vec![n, v, d]));
        out += &tabwrite(&rows, 3, 0);
        out.push('\n');
    }
    for (header, list) in [("SECRET", secrets), ("SSH", ssh)] {
        if !list.is_empty() {
            let mut rows = vec![vec![header.to_string(), "REQUIRED".into()]];
            rows.extend(list.into_iter().map(|(n, r)| vec![n, if r { "true".into() } else { String::new() }]));
            out += &tabwrite(&rows, 3, 0);
            out.push('\n');
        }
    }
    Ok(out)
}

/// `--call check`: BuildKit's build checks, printed as buildx prints them.
/// The check config comes from the `BUILDKIT_DOCKERFILE_CHECK` build arg,
/// else the `# check=` directive.
fn check(ast: &Ast, text: &str, file_name: &str, build_args: &BTreeMap<String, String>) -> anyhow::Result<(String, u8)> {
    let warnings = lint::check(ast, &check_config(ast, build_args)?, &local_image_env);
    if warnings.is_empty() {
        return Ok(("Check complete, no warnings found.\n".into(), 0));
    }
    let mut out = match warnings.len() {
        1 => "Check complete, 1 warning has been found!\n".to_string(),
        n => format!("Check complete, {n} warnings have been found!\n"),
    };
    // Go's bytes.Split: a final newline leaves an empty last line.
    let lines: Vec<&str> = text.split('\n').collect();
    for w in &warnings {
        let _ = write!(out, "\nWARNING: {} - {}\n{}\n", w.rule.name, w.rule.url, w.detail);
        out += &source_excerpt(&lines, file_name, w.start_line, w.end_line);
    }
    Ok((out, 1))
}

fn check_config(ast: &Ast, build_args: &BTreeMap<String, String>) -> anyhow::Result<CheckConfig> {
    match build_args.get("BUILDKIT_DOCKERFILE_CHECK").or(ast.directives.check.as_ref()) {
        Some(spec) => CheckConfig::parse(spec).map_err(|e| anyhow::anyhow!("check config {spec:?}: {e}")),
        None => Ok(CheckConfig::default()),
    }
}

/// The build checks a build runs before it starts, as buildx's does. An
/// unreadable or broken Dockerfile gives none here: the build reports it.
/// With `check=error=true` a failed check fails the build.
pub fn build_checks(dockerfile: &Path, build_args: &BTreeMap<String, String>) -> anyhow::Result<Vec<lint::Warning>> {
    let Ok(bytes) = std::fs::read(dockerfile) else { return Ok(Vec::new()) };
    let Ok(ast) = parser::parse(&String::from_utf8_lossy(&bytes)) else { return Ok(Vec::new()) };
    let config = check_config(&ast, build_args)?;
    let warnings = lint::check(&ast, &config, &local_image_env);
    if config.error && !warnings.is_empty() {
        let mut rules: Vec<&str> = warnings.iter().map(|w| w.rule.name).collect();
        rules.sort_unstable();
        rules.dedup();
        bail!("{}lint violation found for rules: {}", warnings_summary(&warnings), rules.join(", "));
    }
    Ok(warnings)
}

/// What buildx prints after a build: the count, then one line per warning.
pub fn warnings_summary(warnings: &[lint::Warning]) -> String {
    let mut out = match warnings.len() {
        0 => return String::new(),
        1 => "1 warning found:\n".to_string(),
        n => format!("{n} warnings found:\n"),
    };
    for w in warnings {
        let _ = writeln!(out, " - {}: {} (line {})", w.rule.name, w.detail, w.start_line);
    }
    out
}

/// The ENV names of a base image kiln's store already has (the image a
/// build would use unless `--pull`); None for any other, so that no check
/// guesses at an environment it cannot see.
fn local_image_env(base: &str) -> Option<Vec<String>> {
    if base.contains('$') {
        return None;
    }
    let root = crate::dirs::data_dir().join("images");
    if !root.is_dir() {
        return None;
    }
    let name = crate::registry::Reference::parse(base).ok()?.to_string();
    let store = crate::oci::Store::open(root).ok()?;
    let image = store.image(&store.resolve(&name).ok()?, None).ok()?;
    let env = image.config.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_default();
    Some(env.iter().map(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k).to_string()).collect())
}

/// BuildKit's source excerpt: the lines `start..=end` marked `>>>`, with
/// context (two lines each side for one line, one for a range).
fn source_excerpt(lines: &[&str], file_name: &str, start: usize, end: usize) -> String {
    if start < 1 || start > lines.len() {
        return String::new();
    }
    let end = end.clamp(start, lines.len());
    let pad = if start == end { 2 } else { 1 };
    let (first, last) = (start.saturating_sub(pad).max(1), (end + pad).min(lines.len()));
    let mut out = format!("{file_name}:{start}\n--------------------\n");
    for (i, line) in lines.iter().enumerate().take(last).skip(first - 1) {
        let n = i + 1;
        let mark = if (start..=end).contains(&n) { ">>>" } else { "   " };
        let _ = writeln!(out, " {n:>3} | {mark} {line}");
    }
    out += "--------------------\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_values_and_check_shorthand() {
        assert_eq!(Call::from_flags(None, false).unwrap(), Call::Build);
        assert_eq!(Call::from_flags(None, true).unwrap(), Call::Check);
        assert_eq!(Call::from_flags(Some("outline"), false).unwrap(), Call::Outline);
        let err = Call::from_flags(Some("lintz"), false).unwrap_err().to_string();
        assert!(err.contains("--call lintz") && err.contains("expected build, check, outline or targets"), "{err}");
        let err = Call::from_flags(Some("outline,format=json"), false).unwrap_err().to_string();
        assert!(err.contains("format=json are not supported"), "{err}");
    }

    #[test]
    fn excerpt_pads_a_single_line_by_two_and_a_range_by_one() {
        let lines: Vec<&str> = "a\nb\nc\nd\ne\nf\n".split('\n').collect();
        assert_eq!(
            source_excerpt(&lines, "Dockerfile", 3, 3),
            "Dockerfile:3\n--------------------\n   1 |     a\n   2 |     b\n   3 | >>> c\n   4 |     d\n   5 |     e\n--------------------\n"
        );
        assert_eq!(
            source_excerpt(&lines, "Dockerfile", 5, 6),
            "Dockerfile:5\n--------------------\n   4 |     d\n   5 | >>> e\n   6 | >>> f\n   7 |     \n--------------------\n"
        );
    }
}
