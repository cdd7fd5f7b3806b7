//! Step names as BuildKit shows them: `[2/4] RUN ...`, `[builder 2/4] ...`
//! in multi-stage builds, each instruction as written (continuations
//! joined, comments dropped) and `FROM` with its image name expanded.

use crate::dockerfile::instructions::InstructionKind;
use crate::dockerfile::stages::{BaseRef, StageNode};
use crate::dockerfile::{Dockerfile, Instruction, Span};

/// The single line (continuations joined) an instruction was written as.
pub(super) fn instruction_text(df: &Dockerfile, span: Span) -> String {
    let start = span.start.line.max(1);
    let end = span.end.line.max(start);
    let mut out = String::new();
    for line in df.source.iter().take(end).skip(start - 1) {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let line = line.strip_suffix(df.directives.escape).unwrap_or(line).trim();
        if !out.is_empty() && !line.is_empty() {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

/// The stage's part of its step names: nothing in a one-stage build.
pub(super) fn stage_label(df: &Dockerfile, index: usize) -> String {
    match (&df.stages[index].name, df.stages.len()) {
        (_, 1) => String::new(),
        (Some(name), _) => format!("{name} "),
        (None, _) => format!("stage-{index} "),
    }
}

/// Whether an instruction is a step of its own (a vertex in BuildKit's graph).
pub(super) fn is_vertex(kind: &InstructionKind) -> bool {
    matches!(kind, InstructionKind::Run(_) | InstructionKind::Copy(_) | InstructionKind::Add(_) | InstructionKind::Workdir(_))
}

/// How many steps a stage with `instructions` shows (its FROM included).
pub(super) fn step_count(instructions: &[Instruction]) -> usize {
    1 + instructions.iter().filter(|i| is_vertex(&i.kind)).count()
}

/// The FROM step's text, expanded as BuildKit shows it: "FROM docker.io/library/debian:bookworm".
pub(super) fn from_text(df: &Dockerfile, index: usize, node: &StageNode) -> String {
    let stage = &df.stages[index];
    match (&node.base, &stage.name) {
        (BaseRef::Image(name), Some(alias)) => format!("FROM {name} AS {alias}"),
        (BaseRef::Image(name), None) => format!("FROM {name}"),
        _ => instruction_text(df, stage.span),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_text_joins_continuations() {
        let df = crate::dockerfile::parse_str("FROM scratch\nRUN a \\\n  && b\nCOPY x /y\n").unwrap();
        let run = &df.stages[0].instructions[0];
        assert_eq!(instruction_text(&df, run.span), "RUN a && b");
        assert_eq!(instruction_text(&df, df.stages[0].instructions[1].span), "COPY x /y");
    }
}
