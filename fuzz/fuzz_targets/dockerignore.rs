//! .dockerignore files: the first line is a path to test, the rest the
//! patterns; parsing and matching never panic.
#![no_main]
use std::path::Path;

use kiln::dockerfile::dockerignore::IgnoreMatcher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (path, patterns) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(matcher) = IgnoreMatcher::parse(patterns, Path::new(".dockerignore")) {
        let _ = matcher.is_excluded(path);
        let _ = matcher.may_include_below(path);
    }
});
