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
        DebugCommand::Expand { jsonl: _, windows } => {
            expand_jsonl(windows)?;
            Ok(ExitCode::SUCCESS)
        }
    }
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
