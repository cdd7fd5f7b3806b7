//! COPY and ADD source wildcards (Go's filepath.Match) and .dockerignore
//! patterns: the first line is the pattern, the rest the name.
#![no_main]
use kiln::dockerfile::glob::{path_match, Dialect, Glob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, name) = text.split_once('\n').unwrap_or((text, ""));
    let _ = path_match(pattern, name);
    for dialect in [Dialect::Path, Dialect::Ignore, Dialect::Shell] {
        if let Ok(glob) = Glob::compile(pattern, dialect) {
            let _ = glob.matches(name);
        }
    }
});
