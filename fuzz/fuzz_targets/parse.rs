//! Any bytes through the whole frontend: parse, dump, type, evaluate every
//! stage, resolve the stage graph. Errors are fine; panics and hangs are not.
#![no_main]

use kiln::dockerfile::{expand, parser, stages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(ast) = parser::parse(&text) else { return };
    let _ = ast.dump();
    let Ok(df) = kiln::dockerfile::instructions::from_ast(&ast) else { return };
    let mut opts = expand::BuildOptions::new("linux/arm64".parse().unwrap());
    opts.build_args.insert("A".into(), "x y".into());
    let Ok(ev) = expand::Evaluator::new(&df, &opts) else { return };
    for stage in &df.stages {
        let _ = ev.base_name(stage);
        let _ = ev.stage_platform(stage);
        let mut scope = ev.scope(&[("PATH".into(), "/bin".into())]);
        for instr in &stage.instructions {
            if let Ok(kiln::dockerfile::Instruction { kind: kiln::dockerfile::InstructionKind::Copy(c), span }) = scope.expand(instr) {
                for doc in &c.files.heredocs {
                    let _ = scope.heredoc_content(doc, span);
                }
            }
        }
    }
    let _ = stages::resolve(&ev, None);
    let _ = stages::resolve(&ev, Some("a"));
});
