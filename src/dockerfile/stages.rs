//! The stage graph: what each stage is based on, which stages it reads
//! from (`COPY --from`, `RUN --mount=from=`), and which stages a `--target`
//! build needs, in the order to build them.

use super::error::{Error, ErrorKind, Span};
use super::expand::Evaluator;
use super::instructions::{Dockerfile, InstructionKind};
use crate::platform::Platform;

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An image reference, global ARGs expanded.
    Image(String),
    /// An earlier stage, by index.
    Stage(usize),
}

/// Where a `COPY --from` or `RUN --mount=from=` reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    Stage(usize),
    Image(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageNode {
    pub index: usize,
    pub name: Option<String>,
    pub base: BaseRef,
    /// `FROM --platform`, expanded; None means the build's target platform.
    pub platform: Option<Platform>,
    /// Stages this one needs (base and --from sources), without duplicates.
    pub deps: Vec<usize>,
    /// Images read by `COPY --from` / `--mount=from=` that are not stages.
    pub image_sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageGraph {
    pub stages: Vec<StageNode>,
    /// The stage the build produces.
    pub target: usize,
    /// The stages the target needs (itself included), dependencies first.
    pub order: Vec<usize>,
}

/// Resolves every stage and prunes to what `target` (default: the last stage) needs.
pub fn resolve(eval: &Evaluator<'_>, target: Option<&str>) -> Result<StageGraph, Error> {
    let df = eval.dockerfile();
    let mut stages = Vec::with_capacity(df.stages.len());
    for stage in &df.stages {
        let base_name = eval.base_name(stage)?;
        let lower = base_name.to_lowercase();
        let base = if lower == "scratch" {
            BaseRef::Scratch
        } else if let Some(prev) = df.stages[..stage.index].iter().find(|s| s.name.as_deref() == Some(lower.as_str())) {
            BaseRef::Stage(prev.index)
        } else {
            BaseRef::Image(base_name)
        };
        let platform = eval.stage_platform(stage)?;
        let mut deps = Vec::new();
        if let BaseRef::Stage(i) = base {
            deps.push(i);
        }
        let mut image_sources = Vec::new();
        // COPY --from may use the stage's ARGs, so walk them in order.
        let mut scope = eval.scope(&[]);
        for instr in &stage.instructions {
            let froms: Vec<String> = match &instr.kind {
                InstructionKind::Copy(c) if c.from.is_some() => {
                    match scope.expand(instr)?.kind {
                        InstructionKind::Copy(c) => c.from.into_iter().collect(),
                        _ => Vec::new(),
                    }
                }
                InstructionKind::Run(r) => r.mounts.iter().filter_map(|m| m.from.clone()).collect(),
                InstructionKind::Arg(_) | InstructionKind::Env(_) => {
                    scope.expand(instr)?;
                    Vec::new()
                }
                _ => Vec::new(),
            };
            for from in froms {
                match source_ref(df, &from, instr.span)? {
                    SourceRef::Stage(i) => {
                        if !deps.contains(&i) {
                            deps.push(i);
                        }
                    }
                    SourceRef::Image(img) => image_sources.push(img),
                }
            }
        }
        stages.push(StageNode { index: stage.index, name: stage.name.clone(), base, platform, deps, image_sources });
    }
    let target = match target {
        None => stages.len() - 1,
        Some(name) => match df.stage_by_name(name) {
            Some(s) => s.index,
            None => {
                let known: Vec<&str> = df.stages.iter().filter_map(|s| s.name.as_deref()).collect();
                let msg = format!(
                    "target stage {name:?} could not be found (stages: {})",
                    if known.is_empty() { "none are named".to_string() } else { known.join(", ") }
                );
                let last = df.stages[df.stages.len() - 1].span;
                return Err(df.error_at(Span { start: super::Pos { line: 0, col: 0 }, ..last }, ErrorKind::Stage(msg)));
            }
        },
    };
    let order = build_order(df, &stages, target)?;
    Ok(StageGraph { stages, target, order })
}

/// A `--from` value: a stage name, a stage index, or else an image.
pub fn source_ref(df: &Dockerfile, from: &str, span: Span) -> Result<SourceRef, Error> {
    if let Some(s) = df.stage_by_name(from) {
        return Ok(SourceRef::Stage(s.index));
    }
    if !from.is_empty() && from.bytes().all(|b| b.is_ascii_digit()) {
        return match from.parse::<usize>() {
            Ok(i) if i < df.stages.len() => Ok(SourceRef::Stage(i)),
            _ => {
                let msg = format!("--from={from}: there is no stage with index {from} (the Dockerfile has {} stages)", df.stages.len());
                Err(df.error_at(span, ErrorKind::Stage(msg)))
            }
        };
    }
    if from.is_empty() {
        return Err(df.error_at(span, ErrorKind::Stage("--from is empty: expected a stage name, index or image".into())));
    }
    Ok(SourceRef::Image(from.to_string()))
}

/// Depth-first post-order from the target, reporting cycles.
fn build_order(df: &Dockerfile, stages: &[StageNode], target: usize) -> Result<Vec<usize>, Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; stages.len()];
    let mut order = Vec::new();
    // Explicit stack of (stage, next dependency to visit) so deep chains cannot overflow.
    let mut stack = vec![(target, 0usize)];
    marks[target] = Mark::Active;
    while let Some(&mut (s, ref mut next)) = stack.last_mut() {
        if let Some(&dep) = stages[s].deps.get(*next) {
            *next += 1;
            match marks[dep] {
                Mark::Done => {}
                Mark::Active => {
                    let mut cycle: Vec<String> = stack.iter().skip_while(|(x, _)| *x != dep).map(|(x, _)| stage_label(df, *x)).collect();
                    cycle.push(stage_label(df, dep));
                    let msg = format!("circular dependency between stages: {}", cycle.join(" -> "));
                    return Err(df.error_at(df.stages[s].span, ErrorKind::Stage(msg)));
                }
                Mark::New => {
                    marks[dep] = Mark::Active;
                    stack.push((dep, 0));
                }
            }
        } else {
            marks[s] = Mark::Done;
            order.push(s);
            stack.pop();
        }
    }
    Ok(order)
}

fn stage_label(df: &Dockerfile, i: usize) -> String {
    match &df.stages[i].name {
        Some(n) => n.clone(),
        None => format!("#{i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::expand::BuildOptions;
    use crate::dockerfile::instructions::parse;

    fn graph(src: &str, target: Option<&str>) -> Result<StageGraph, Error> {
        let df = parse(src).unwrap();
        let opts = BuildOptions::new("linux/arm64".parse().unwrap());
        let ev = Evaluator::new(&df, &opts).unwrap();
        resolve(&ev, target)
    }

    const MULTI: &str = "ARG BASE=debian\nFROM $BASE AS base\nRUN x\n\
FROM base AS build\nRUN --mount=type=bind,from=tools,target=/t make\n\
FROM alpine AS tools\n\
FROM scratch AS unused\n\
FROM base AS final\nARG SRC=build\nCOPY --from=$SRC /out /\nCOPY --from=0 /etc /etc\nCOPY --from=busybox:1 /bin/sh /sh\n";

    #[test]
    fn bases_and_dependencies() {
        let g = graph(MULTI, None).unwrap();
        assert_eq!(g.stages[0].base, BaseRef::Image("debian".into()));
        assert_eq!(g.stages[1].base, BaseRef::Stage(0));
        assert_eq!(g.stages[1].deps, vec![0, 2]);
        assert_eq!(g.stages[3].base, BaseRef::Scratch);
        assert_eq!(g.stages[4].deps, vec![0, 1]);
        assert_eq!(g.stages[4].image_sources, vec!["busybox:1".to_string()]);
        assert_eq!(g.target, 4);
        assert_eq!(g.order, vec![0, 2, 1, 4], "unused is pruned, dependencies first");
    }

    #[test]
    fn target_prunes() {
        let g = graph(MULTI, Some("BUILD")).unwrap();
        assert_eq!(g.order, vec![0, 2, 1]);
        let e = graph(MULTI, Some("nope")).unwrap_err();
        assert!(e.to_string().contains("target stage \"nope\" could not be found"), "{e}");
    }

    #[test]
    fn cycles_and_bad_indexes() {
        let e = graph("FROM a AS x\nCOPY --from=y / /\nFROM b AS y\nCOPY --from=x / /\n", None).unwrap_err();
        assert!(e.to_string().contains("circular dependency between stages: y -> x -> y"), "{e}");
        let e = graph("FROM a\nCOPY --from=0 / /\n", None).unwrap_err();
        assert!(e.to_string().contains("circular"), "{e}");
        let e = graph("FROM a\nCOPY --from=3 / /\n", None).unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.to_string().contains("no stage with index 3"), "{e}");
    }

    #[test]
    fn from_platform_per_stage() {
        let g = graph("FROM --platform=$BUILDPLATFORM a AS b\nFROM --platform=linux/arm/v7 c\nFROM d\n", Some("b")).unwrap();
        assert_eq!(g.stages[0].platform, Some(Platform::host()));
        assert_eq!(g.stages[1].platform, Some("linux/arm/v7".parse().unwrap()));
        assert_eq!(g.stages[2].platform, None);
    }

    #[test]
    fn later_stage_names_in_from_are_images() {
        let g = graph("FROM later\nFROM x AS later\n", None).unwrap();
        assert_eq!(g.stages[0].base, BaseRef::Image("later".into()));
    }
}
