//! The shell-word lexer in every mode, plus .dockerignore patterns.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use kiln::dockerfile::dockerignore::IgnoreMatcher;
use kiln::dockerfile::shell::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let env: HashMap<String, String> = [("A", "a b"), ("E", ""), ("P", "x/y/z.tar.gz"), ("N", "\n*")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lexer = Lexer {
        escape: if mode & 1 == 0 { '\\' } else { '`' },
        raw_quotes: mode & 2 != 0,
        raw_escapes: mode & 4 != 0,
        skip_unset: mode & 8 != 0,
    };
    let _ = lexer.process_word(&text, &env);
    let _ = lexer.process_words(&text, &env);
    if mode & 16 != 0 {
        if let Ok(m) = IgnoreMatcher::parse(&text, Path::new(".dockerignore")) {
            for p in ["a", "a/b/c.txt", "docs/x.md", ".git/config", "x/y/z"] {
                let _ = m.is_excluded(p);
                let _ = m.may_include_below(p);
            }
        }
    }
});
