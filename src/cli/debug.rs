//! `kiln debug ...`: tools for developers and the conformance suites.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::dockerfile::shell::{CaseInsensitive, Lexer};

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print a Dockerfile's AST in BuildKit's Node.Dump() format
    DockerfileDump { file: std::path::PathBuf },
    /// Parse, evaluate and print the stages a build of FILE would run
    DockerfilePlan {
        file: std::path::PathBuf,
        /// Build only the stages this stage needs
        #[arg(long)]
        target: Option<String>,
        /// Platform the image is for (TARGETPLATFORM)
        #[arg(long, default_value = "linux/arm64")]
        platform: String,
        /// NAME=value, may be repeated
        #[arg(long = "build-arg")]
        build_args: Vec<String>,
    },
    /// Expand shell words; `--jsonl` reads one JSON request per stdin line
    /// (the protocol of run_shell_suite.py) and answers one JSON line each
    Expand {
        #[arg(long, required = true)]
        jsonl: bool,
        /// Match variable names case-insensitively, as on Windows
        #[arg(long)]
        windows: bool,
    },
}

pub fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::DockerfileDump { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let text = String::from_utf8_lossy(&bytes);
            let ast = crate::dockerfile::parser::parse(&text).map_err(|e| e.in_file(&file))?;
            for w in &ast.warnings {
                eprintln!("warning: {}:{}:{}: {}", file.display(), w.pos.line, w.pos.col, w.message);
            }
            println!("{}", ast.dump());
            Ok(ExitCode::SUCCESS)
        }
        DebugCommand::DockerfilePlan { file, target, platform, build_args } => {
            plan(&file, target.as_deref(), &platform, &build_args)?;
            Ok(ExitCode::SUCCESS)
        }
        DebugCommand::Expand { jsonl: _, windows } => {
            expand_jsonl(windows)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints each needed stage with its expanded instructions.
fn plan(file: &std::path::Path, target: Option<&str>, platform: &str, build_args: &[String]) -> anyhow::Result<()> {
    use crate::dockerfile::{expand, stages};
    let df = crate::dockerfile::parse_file(file)?;
    for w in &df.warnings {
        eprintln!("warning: {}:{}:{}: {}", file.display(), w.pos.line, w.pos.col, w.message);
    }
    let mut opts = expand::BuildOptions::new(platform.parse()?);
    for arg in build_args {
        let (k, v) = arg.split_once('=').with_context(|| format!("--build-arg {arg:?}: expected NAME=value"))?;
        opts.build_args.insert(k.to_string(), v.to_string());
    }
    let in_file = |e: crate::dockerfile::Error| e.in_file(file);
    let ev = expand::Evaluator::new(&df, &opts).map_err(in_file)?;
    let graph = stages::resolve(&ev, target).map_err(in_file)?;
    for &i in &graph.order {
        let node = &graph.stages[i];
        let stage = &df.stages[i];
        println!("stage {i} {:?} base={:?} platform={:?} deps={:?}", node.name, node.base, node.platform, node.deps);
        let mut scope = ev.scope(&[]);
        for instr in &stage.instructions {
            let expanded = scope.expand(instr).map_err(in_file)?;
            println!("  {:>4}: {:?}", instr.span.start.line, expanded.kind);
        }
    }
    Ok(())
}

/// Answers `{"mode": "envvar"|"words", "input": ..., "env": {...}}` requests.
fn expand_jsonl(windows: bool) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let lexer = Lexer::new('\\');
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<serde_json::Value>(&line) {
            Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(req) => {
                let input = req["input"].as_str().unwrap_or_default();
                let env: HashMap<String, String> = req["env"]
                    .as_object()
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                let names: Vec<String> = env.keys().cloned().collect();
                let folded = CaseInsensitive(&env, &names);
                let vars: &dyn crate::dockerfile::shell::Vars = if windows { &folded } else { &env };
                let result = match req["mode"].as_str() {
                    Some("words") => lexer.process_words(input, vars).map(serde_json::Value::from),
                    _ => lexer.process_word(input, vars).map(serde_json::Value::from),
                };
                match result {
                    Ok(v) => serde_json::json!({"ok": true, "output": v}),
                    Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                }
            }
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}
