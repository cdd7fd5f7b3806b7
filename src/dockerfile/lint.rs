//! BuildKit's Dockerfile build checks (`docker buildx build --check`): the
//! rules of its `linter` package, with their names, descriptions, URLs and
//! messages, run on the parsed AST so that they also see what the typed
//! parse rejects or loses (keyword casing, duplicate stage names).
//!
//! Checks are static: a `WORKDIR $DIR` is not judged, and UndefinedVar only
//! runs where the stage's environment is known (scratch, an earlier stage,
//! an image the caller can describe).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use super::instructions::suggest::edit_distance;
use super::parser::{parse_words, Ast, Node};
use super::shell::{Lexer, Vars};

/// One build check, as BuildKit names and documents it.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    pub url: &'static str,
}

macro_rules! rule {
    ($id:ident, $name:literal, $slug:literal, $description:literal) => {
        pub const $id: Rule = Rule {
            name: $name,
            description: $description,
            url: concat!("https://docs.docker.com/go/dockerfile/rule/", $slug, "/"),
        };
    };
}

rule!(STAGE_NAME_CASING, "StageNameCasing", "stage-name-casing", "Stage names should be lowercase");
rule!(FROM_AS_CASING, "FromAsCasing", "from-as-casing", "The 'as' keyword should match the case of the 'from' keyword");
rule!(NO_EMPTY_CONTINUATION, "NoEmptyContinuation", "no-empty-continuation", "Empty continuation lines will become errors in a future release");
rule!(
    CONSISTENT_INSTRUCTION_CASING,
    "ConsistentInstructionCasing",
    "consistent-instruction-casing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)"
);
rule!(DUPLICATE_STAGE_NAME, "DuplicateStageName", "duplicate-stage-name", "Stage names should be unique");
rule!(RESERVED_STAGE_NAME, "ReservedStageName", "reserved-stage-name", "Reserved words should not be used as stage names");
rule!(
    JSON_ARGS_RECOMMENDED,
    "JSONArgsRecommended",
    "json-args-recommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
);
rule!(
    MAINTAINER_DEPRECATED,
    "MaintainerDeprecated",
    "maintainer-deprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
);
rule!(UNDEFINED_ARG_IN_FROM, "UndefinedArgInFrom", "undefined-arg-in-from", "FROM command must use declared ARGs");
rule!(
    WORKDIR_RELATIVE_PATH,
    "WorkdirRelativePath",
    "workdir-relative-path",
    "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
);
rule!(
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    "MultipleInstructionsDisallowed",
    "multiple-instructions-disallowed",
    "Multiple instructions of the same type should not be used in the same stage"
);
rule!(
    LEGACY_KEY_VALUE_FORMAT,
    "LegacyKeyValueFormat",
    "legacy-key-value-format",
    "Legacy key/value format with whitespace separator should not be used"
);
rule!(
    REDUNDANT_TARGET_PLATFORM,
    "RedundantTargetPlatform",
    "redundant-target-platform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
);
rule!(
    SECRETS_USED_IN_ARG_OR_ENV,
    "SecretsUsedInArgOrEnv",
    "secrets-used-in-arg-or-env",
    "Sensitive data should not be used in the ARG or ENV commands"
);
rule!(
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    "FromPlatformFlagConstDisallowed",
    "from-platform-flag-const-disallowed",
    "FROM --platform flag should not use a constant value"
);

rule!(
    INVALID_DEFAULT_ARG_IN_FROM,
    "InvalidDefaultArgInFrom",
    "invalid-default-arg-in-from",
    "Default value for global ARG results in an empty or invalid base image name"
);
rule!(UNDEFINED_VAR, "UndefinedVar", "undefined-var", "Variables should be defined before their use");

/// The ARGs BuildKit defines without a declaration.
const BUILTIN_ARGS: [&str; 8] =
    ["BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT", "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT"];

/// Whether `name` is one of the ARGs BuildKit defines without a declaration.
pub fn is_builtin_arg(name: &str) -> bool {
    BUILTIN_ARGS.contains(&name)
}

/// Stage names BuildKit reserves.
const RESERVED_STAGE_NAMES: [&str; 2] = ["context", "scratch"];

/// One failed check at lines `start_line..=end_line` of the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub rule: &'static Rule,
    pub detail: String,
    pub start_line: usize,
    pub end_line: usize,
}

/// What `# check=` (or the `BUILDKIT_DOCKERFILE_CHECK` build arg) asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// Rule names not to run.
    pub skip: Vec<String>,
    /// `skip=all`.
    pub skip_all: bool,
    /// `error=true`: a failed check fails the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses `skip=Rule1,Rule2;error=true`, as BuildKit reads the directive.
    pub fn parse(spec: &str) -> Result<CheckConfig, String> {
        let mut config = CheckConfig::default();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("invalid check option {part:?}: expected key=value"))?;
            match key.trim().to_lowercase().as_str() {
                "skip" => {
                    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        if name.eq_ignore_ascii_case("all") {
                            config.skip_all = true;
                        } else {
                            config.skip.push(name.to_string());
                        }
                    }
                }
                "error" => {
                    config.error = super::mount::parse_bool(value.trim())
                        .ok_or_else(|| format!("invalid check option error={value}: expected true or false"))?;
                }
                other => return Err(format!("invalid check option {other:?}: expected skip or error")),
            }
        }
        Ok(config)
    }

    fn runs(&self, rule: &Rule) -> bool {
        !self.skip_all && !self.skip.iter().any(|s| s == rule.name)
    }
}

/// Records the names of the variables a word references.
#[derive(Default)]
struct Referenced(RefCell<Vec<String>>);

impl Vars for Referenced {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.0.borrow_mut().push(name.to_string());
        None
    }
}

/// The variables `word` references, in order of use.
pub(crate) fn referenced_vars(word: &str, escape: char) -> Vec<String> {
    let seen = Referenced::default();
    // An unset `${X:?}` fails the expansion after X was recorded: that is all we need.
    let _ = Lexer::new(escape).process_word(word, &seen);
    seen.0.into_inner()
}

/// The instruction keyword as written.
fn written_keyword(node: &Node) -> &str {
    node.original.trim_start().split(|c: char| c.is_whitespace()).next().unwrap_or("")
}

fn is_self_consistent_casing(word: &str) -> bool {
    word == word.to_lowercase() || word == word.to_uppercase()
}

/// BuildKit's secret-looking key test: a `_`-separated part is a secret word, and none is `public`.
fn is_secret_key(key: &str) -> bool {
    const SECRET_WORDS: [&str; 10] =
        ["apikey", "auth", "credential", "credentials", "key", "password", "pword", "passwd", "secret", "token"];
    let lower = key.to_lowercase();
    let parts: Vec<&str> = lower.split('_').collect();
    !parts.contains(&"public") && parts.iter().any(|p| SECRET_WORDS.contains(p))
}

/// The closest of `names` to `name` (edit distance of at most two, ignoring case).
fn suggest<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    names.map(|n| (edit_distance(&lower, &n.to_lowercase()), n)).filter(|(d, _)| *d <= 2).min().map(|(_, n)| n)
}

struct Checker<'c> {
    config: &'c CheckConfig,
    warnings: Vec<Warning>,
}

impl Checker<'_> {
    fn report(&mut self, rule: &'static Rule, node: &Node, detail: String) {
        if self.config.runs(rule) {
            self.warnings.push(Warning { rule, detail, start_line: node.span.start.line, end_line: node.span.end.line });
        }
    }
}

/// What the stage checks remember about one stage.
#[derive(Default)]
struct StageState {
    name: Option<String>,
    /// An absolute WORKDIR was set in this stage or the stage it builds on.
    absolute_workdir: bool,
    shell_set: bool,
    /// CMD, ENTRYPOINT and HEALTHCHECK nodes, by upper-case keyword.
    single_use: Vec<(String, usize)>,
    /// The ENV names the stage has (its base's and its own); None when the
    /// base image's environment is unknown, which turns UndefinedVar off.
    env: Option<Vec<String>>,
    /// The ARGs the stage declared.
    args: Vec<String>,
}

/// The environment of a base image, by name as written in FROM; None when unknown.
pub type BaseEnv<'a> = &'a dyn Fn(&str) -> Option<Vec<String>>;

/// The instructions whose words BuildKit expands (RUN only in its flags).
fn expanded_words(node: &Node) -> Vec<&str> {
    let flags = node.flags.iter().map(|f| f.text.as_str());
    match node.keyword.as_str() {
        "env" | "label" | "arg" | "copy" | "add" | "workdir" | "user" | "expose" | "volume" | "stopsignal" => {
            flags.chain(std::iter::once(node.rest.text.as_str())).collect()
        }
        "run" => flags.collect(),
        _ => Vec::new(),
    }
}

/// `${NAME-...}`, `${NAME:+...}` and the like supply a value of their own.
fn has_fallback(word: &str, name: &str) -> bool {
    ["-", ":-", "+", ":+", "?", ":?"].iter().any(|op| word.contains(&format!("${{{name}{op}")))
}

/// UndefinedVar: variables an expanded instruction uses that neither the
/// stage's environment nor its ARGs define.
fn check_undefined_vars(c: &mut Checker, node: &Node, stage: &StageState, escape: char) {
    let Some(env) = &stage.env else { return };
    let mut reported = HashSet::new();
    for word in expanded_words(node) {
        for var in referenced_vars(word, escape) {
            let defined = env.contains(&var) || stage.args.contains(&var);
            if defined || has_fallback(word, &var) || !reported.insert(var.clone()) {
                continue;
            }
            let mut detail = format!("Usage of undefined variable '${var}'");
            if let Some(s) = suggest(&var, env.iter().chain(&stage.args).map(String::as_str)) {
                detail.push_str(&format!(" (did you mean ${s}?)"));
            }
            c.report(&UNDEFINED_VAR, node, detail);
        }
    }
}

/// Runs the build checks on `ast`, in source order.
pub fn check(ast: &Ast, config: &CheckConfig, base_env: BaseEnv<'_>) -> Vec<Warning> {
    let mut c = Checker { config, warnings: Vec::new() };
    let escape = ast.directives.escape;
    check_casing(&mut c, ast);

    let mut global_args: Vec<String> = Vec::new();
    // The global ARGs' default values (expanded), and the platform ARGs', for InvalidDefaultArgInFrom.
    let host = crate::platform::Platform::host();
    let mut global_defaults: HashMap<String, String> = super::expand::platform_args(&host, &host).into_iter().collect();
    let mut stages: Vec<StageState> = Vec::new();
    let mut nodes_in_stage: Vec<&Node> = Vec::new();
    let finish_stage = |c: &mut Checker, stages: &[StageState], nodes: &mut Vec<&Node>| {
        if let Some(stage) = stages.last() {
            for (keyword, count) in &stage.single_use {
                let mut seen = 0;
                for node in nodes.iter().filter(|n| n.keyword.eq_ignore_ascii_case(keyword)) {
                    seen += 1;
                    if seen < *count {
                        let detail = format!(
                            "Multiple {keyword} instructions should not be used in the same stage because only the last one will be used"
                        );
                        c.report(&MULTIPLE_INSTRUCTIONS_DISALLOWED, node, detail);
                    }
                }
            }
        }
        nodes.clear();
    };

    for node in &ast.nodes {
        if node.keyword == "from" {
            finish_stage(&mut c, &stages, &mut nodes_in_stage);
            let state = check_from(&mut c, node, &global_args, &stages, escape, base_env);
            check_default_base(&mut c, node, &global_defaults, &stages, escape);
            stages.push(state);
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            if node.keyword == "arg" {
                for decl in parse_words(&node.rest.text, escape) {
                    let name = decl.split_once('=').map_or(decl.as_str(), |(n, _)| n);
                    if is_secret_key(name) {
                        c.report(&SECRETS_USED_IN_ARG_OR_ENV, node, secret_detail("ARG", name));
                    }
                    global_args.push(name.to_string());
                    if let Some((_, default)) = decl.split_once('=') {
                        let value = Lexer::new(escape).process_word(default, &global_defaults).unwrap_or_default();
                        global_defaults.insert(name.to_string(), value);
                    }
                }
            }
            continue;
        };
        nodes_in_stage.push(node);
        check_undefined_vars(&mut c, node, stage, escape);
        match node.keyword.as_str() {
            "cmd" | "entrypoint" => {
                let keyword = node.keyword.to_uppercase();
                if !node.json && !stage.shell_set {
                    let detail = format!("JSON arguments recommended for {keyword} to prevent unintended behavior related to OS signals");
                    c.report(&JSON_ARGS_RECOMMENDED, node, detail);
                }
                count_single_use(stage, keyword);
            }
            "healthcheck" => count_single_use(stage, "HEALTHCHECK".into()),
            "shell" => stage.shell_set = true,
            "maintainer" => {
                c.report(&MAINTAINER_DEPRECATED, node, "Maintainer instruction is deprecated in favor of using label".into())
            }
            "workdir" => {
                let path = node.rest.text.as_str();
                if path.starts_with('/') {
                    stage.absolute_workdir = true;
                } else if !stage.absolute_workdir && !path.is_empty() && !path.contains('$') {
                    let detail = format!("Relative workdir {} can have unexpected results if the base image changes", super::parser::go_quote(path));
                    c.report(&WORKDIR_RELATIVE_PATH, node, detail);
                }
            }
            "env" | "label" => {
                let keyword = node.keyword.to_uppercase();
                // The parser marks each key/value triple's separator; an empty one is the legacy `KEY value` form.
                if node.args.chunks(3).any(|kv| kv.get(2).is_some_and(|sep| sep.is_empty())) {
                    let detail = format!("\"{keyword} key=value\" should be used instead of legacy \"{keyword} key value\" format");
                    c.report(&LEGACY_KEY_VALUE_FORMAT, node, detail);
                }
                if keyword == "ENV" {
                    for kv in node.args.chunks(3) {
                        if is_secret_key(&kv[0]) {
                            c.report(&SECRETS_USED_IN_ARG_OR_ENV, node, secret_detail("ENV", &kv[0]));
                        }
                        if let Some(env) = stage.env.as_mut() {
                            env.push(kv[0].clone());
                        }
                    }
                }
            }
            "arg" => {
                for decl in parse_words(&node.rest.text, escape) {
                    let name = decl.split_once('=').map_or(decl.as_str(), |(n, _)| n);
                    if is_secret_key(name) {
                        c.report(&SECRETS_USED_IN_ARG_OR_ENV, node, secret_detail("ARG", name));
                    }
                    stage.args.push(name.to_string());
                }
            }
            _ => {}
        }
    }
    finish_stage(&mut c, &stages, &mut nodes_in_stage);

    for w in &ast.warnings {
        if w.message.starts_with("empty continuation line") {
            if let Some(node) = ast.nodes.iter().find(|n| n.span.start.line == w.pos.line) {
                c.report(&NO_EMPTY_CONTINUATION, node, "Empty continuation line".into());
            }
        }
    }
    c.warnings.sort_by(|a, b| (a.start_line, a.rule.name).cmp(&(b.start_line, b.rule.name)));
    c.warnings
}

/// A stage named after its constant platform (`build-arm64`) is exempt, as in BuildKit.
fn names_platform(stage: Option<&str>, platform: &str) -> bool {
    let mut parts = platform.split('/');
    let (Some(os), Some(arch)) = (parts.next(), parts.next()) else { return false };
    stage.is_some_and(|s| s.contains(os) && s.contains(arch))
}

/// InvalidDefaultArgInFrom: a FROM whose base, with the global ARGs' default
/// values, is empty or no valid image reference (nor an earlier stage).
fn check_default_base(c: &mut Checker, node: &Node, defaults: &HashMap<String, String>, stages: &[StageState], escape: char) {
    let Some(base) = node.args.first().filter(|b| b.contains('$')) else { return };
    let Ok(name) = Lexer::new(escape).process_word(base, defaults) else { return };
    let lower = name.to_lowercase();
    let known = lower == "scratch" || stages.iter().any(|s| s.name.as_deref() == Some(lower.as_str()));
    if !known && crate::registry::Reference::parse(&name).is_err() {
        c.report(&INVALID_DEFAULT_ARG_IN_FROM, node, format!("Default value for ARG {base} results in empty or invalid base image name"));
    }
}

fn secret_detail(instruction: &str, key: &str) -> String {
    format!("Do not use ARG or ENV instructions for sensitive data ({instruction} {})", super::parser::go_quote(key))
}

fn count_single_use(stage: &mut StageState, keyword: String) {
    match stage.single_use.iter_mut().find(|(k, _)| *k == keyword) {
        Some((_, n)) => *n += 1,
        None => stage.single_use.push((keyword, 1)),
    }
}

/// ConsistentInstructionCasing: every keyword in the casing most keywords use.
fn check_casing(c: &mut Checker, ast: &Ast) {
    let (mut lower, mut upper) = (0, 0);
    for node in &ast.nodes {
        let kw = written_keyword(node);
        if is_self_consistent_casing(kw) {
            if kw == kw.to_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for node in &ast.nodes {
        let kw = written_keyword(node);
        let correct = if majority_lower && kw != kw.to_lowercase() {
            "lowercase"
        } else if !majority_lower && kw != kw.to_uppercase() {
            "uppercase"
        } else {
            continue;
        };
        let detail = format!("Command '{kw}' should match the case of the command majority ({correct})");
        c.report(&CONSISTENT_INSTRUCTION_CASING, node, detail);
    }
}

/// The FROM checks; returns the new stage's state.
fn check_from(c: &mut Checker, node: &Node, global_args: &[String], stages: &[StageState], escape: char, base_env: BaseEnv<'_>) -> StageState {
    let mut state = StageState::default();
    // A stage built on an earlier one inherits its WORKDIR and ENV (not its ARGs).
    if let Some(base) = node.args.first() {
        let lower = base.to_lowercase();
        match stages.iter().rev().find(|s| s.name.as_deref() == Some(lower.as_str())) {
            Some(parent) => {
                state.absolute_workdir = parent.absolute_workdir;
                state.shell_set = parent.shell_set;
                state.env = parent.env.clone();
            }
            None if lower == "scratch" => state.env = Some(Vec::new()),
            None => state.env = base_env(base),
        }
    }
    let from_kw = written_keyword(node);
    if let [_, as_kw, name] = node.args.as_slice() {
        if as_kw.eq_ignore_ascii_case("as") {
            let upper_from = from_kw == from_kw.to_uppercase();
            let lower_from = from_kw == from_kw.to_lowercase();
            if (upper_from && *as_kw != as_kw.to_uppercase()) || (lower_from && *as_kw != as_kw.to_lowercase()) {
                c.report(&FROM_AS_CASING, node, format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"));
            }
            if *name != name.to_lowercase() {
                c.report(&STAGE_NAME_CASING, node, format!("Stage name '{name}' should be lowercase"));
            }
            let lower = name.to_lowercase();
            if RESERVED_STAGE_NAMES.contains(&lower.as_str()) {
                let detail = format!("Stage name should not use the same name as reserved stage {}", super::parser::go_quote(&lower));
                c.report(&RESERVED_STAGE_NAME, node, detail);
            }
            if stages.iter().any(|s| s.name.as_deref() == Some(lower.as_str())) {
                let detail = format!("Duplicate stage name {}, stage names should be unique", super::parser::go_quote(&lower));
                c.report(&DUPLICATE_STAGE_NAME, node, detail);
            }
            state.name = Some(lower);
        }
    }

    let platform = node.flags.iter().find_map(|f| f.text.strip_prefix("--platform=").map(str::to_string));
    let mut words: Vec<&str> = node.args.first().map(String::as_str).into_iter().collect();
    if let Some(p) = &platform {
        words.push(p);
        if p == "$TARGETPLATFORM" || p == "${TARGETPLATFORM}" {
            let detail = format!("Setting platform to predefined {p} in FROM is redundant as this is the default behavior");
            c.report(&REDUNDANT_TARGET_PLATFORM, node, detail);
        } else if !p.contains('$') && !names_platform(state.name.as_deref(), p) {
            let detail = format!("FROM --platform flag should not use constant value {}", super::parser::go_quote(p));
            c.report(&FROM_PLATFORM_FLAG_CONST_DISALLOWED, node, detail);
        }
    }
    let mut reported = HashSet::new();
    for word in words {
        for var in referenced_vars(word, escape) {
            let declared = global_args.contains(&var) || BUILTIN_ARGS.contains(&var.as_str());
            if declared || !reported.insert(var.clone()) {
                continue;
            }
            let mut detail = format!("FROM argument '{var}' is not declared");
            let candidates = global_args.iter().map(String::as_str).chain(BUILTIN_ARGS.iter().copied());
            if let Some(s) = suggest(&var, candidates) {
                detail.push_str(&format!(" (did you mean {s}?)"));
            }
            c.report(&UNDEFINED_ARG_IN_FROM, node, detail);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `busybox` has PATH; other images are unknown.
    fn test_env(base: &str) -> Option<Vec<String>> {
        (base == "busybox").then(|| vec!["PATH".to_string()])
    }

    fn rules(src: &str) -> Vec<(&'static str, String)> {
        let ast = super::super::parser::parse(src).unwrap();
        check(&ast, &CheckConfig::default(), &test_env).into_iter().map(|w| (w.rule.name, w.detail)).collect()
    }

    fn trips(src: &str, rule: &str) -> Vec<String> {
        rules(src).into_iter().filter(|(r, _)| *r == rule).map(|(_, d)| d).collect()
    }

    #[test]
    fn a_clean_dockerfile_has_no_warnings() {
        let src = "ARG BASE=alpine\nFROM ${BASE} AS build\nWORKDIR /src\nWORKDIR sub\nENV A=1\nARG VERSION\nCMD [\"sh\"]\n\
                   FROM --platform=$BUILDPLATFORM build AS final\nWORKDIR rel\nENTRYPOINT [\"x\"]\n";
        assert_eq!(rules(src), vec![]);
    }

    #[test]
    fn json_args_recommended() {
        assert_eq!(
            trips("FROM a\nCMD echo hi\nENTRYPOINT [\"x\"]\n", "JSONArgsRecommended"),
            ["JSON arguments recommended for CMD to prevent unintended behavior related to OS signals"]
        );
        assert!(trips("FROM a\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\n", "JSONArgsRecommended").is_empty());
        // The SHELL is in the image config a later stage builds on.
        assert!(trips("FROM a AS b\nSHELL [\"/bin/bash\", \"-c\"]\nFROM b\nCMD echo hi\n", "JSONArgsRecommended").is_empty());
    }

    #[test]
    fn stage_name_casing_and_from_as_casing() {
        assert_eq!(trips("FROM a AS Build\n", "StageNameCasing"), ["Stage name 'Build' should be lowercase"]);
        assert!(trips("FROM a AS build\n", "StageNameCasing").is_empty());
        assert_eq!(trips("FROM a as build\n", "FromAsCasing"), ["'as' and 'FROM' keywords' casing do not match"]);
        assert!(trips("from a as build\n", "FromAsCasing").is_empty());
    }

    #[test]
    fn consistent_instruction_casing() {
        let src = "FROM a\nRUN x\nrun y\n";
        assert_eq!(trips(src, "ConsistentInstructionCasing"), ["Command 'run' should match the case of the command majority (uppercase)"]);
        assert_eq!(
            trips("from a\nrun x\nRun y\n", "ConsistentInstructionCasing"),
            ["Command 'Run' should match the case of the command majority (lowercase)"]
        );
        assert!(trips("from a\nrun x\n", "ConsistentInstructionCasing").is_empty());
    }

    #[test]
    fn duplicate_and_reserved_stage_names() {
        assert_eq!(
            trips("FROM a AS x\nFROM b AS x\n", "DuplicateStageName"),
            ["Duplicate stage name \"x\", stage names should be unique"]
        );
        assert!(trips("FROM a AS x\nFROM b AS y\n", "DuplicateStageName").is_empty());
        assert_eq!(
            trips("FROM a AS scratch\n", "ReservedStageName"),
            ["Stage name should not use the same name as reserved stage \"scratch\""]
        );
        assert!(trips("FROM a AS scratchy\n", "ReservedStageName").is_empty());
    }

    #[test]
    fn maintainer_deprecated() {
        assert_eq!(trips("FROM a\nMAINTAINER me\n", "MaintainerDeprecated"), ["Maintainer instruction is deprecated in favor of using label"]);
        assert!(trips("FROM a\nLABEL org.opencontainers.image.authors=me\n", "MaintainerDeprecated").is_empty());
    }

    #[test]
    fn undefined_arg_in_from() {
        assert_eq!(
            trips("ARG VERSION=1\nFROM alpine:${VERSIN}\n", "UndefinedArgInFrom"),
            ["FROM argument 'VERSIN' is not declared (did you mean VERSION?)"]
        );
        assert_eq!(trips("FROM alpine:$TAG\n", "UndefinedArgInFrom"), ["FROM argument 'TAG' is not declared"]);
        assert!(trips("ARG TAG\nFROM --platform=$BUILDPLATFORM alpine:$TAG\n", "UndefinedArgInFrom").is_empty());
    }

    #[test]
    fn workdir_relative_path() {
        assert_eq!(
            trips("FROM a\nWORKDIR app\n", "WorkdirRelativePath"),
            ["Relative workdir \"app\" can have unexpected results if the base image changes"]
        );
        assert!(trips("FROM a AS b\nWORKDIR /app\nFROM b\nWORKDIR sub\n", "WorkdirRelativePath").is_empty());
    }

    #[test]
    fn legacy_key_value_format() {
        assert_eq!(
            trips("FROM a\nENV A 1\nLABEL x=y\n", "LegacyKeyValueFormat"),
            ["\"ENV key=value\" should be used instead of legacy \"ENV key value\" format"]
        );
        assert!(trips("FROM a\nENV A=1 B=\"2 3\"\n", "LegacyKeyValueFormat").is_empty());
    }

    #[test]
    fn multiple_instructions_disallowed() {
        let src = "FROM a\nCMD [\"a\"]\nCMD [\"b\"]\nHEALTHCHECK NONE\nFROM b\nCMD [\"c\"]\n";
        assert_eq!(
            trips(src, "MultipleInstructionsDisallowed"),
            ["Multiple CMD instructions should not be used in the same stage because only the last one will be used"]
        );
        let ast = super::super::parser::parse(src).unwrap();
        let w = check(&ast, &CheckConfig::default(), &test_env);
        assert_eq!(w[0].start_line, 2, "the warning is on the first CMD, not the one that counts");
    }

    #[test]
    fn secrets_used_in_arg_or_env() {
        assert_eq!(
            trips("ARG GITHUB_TOKEN\nFROM a\nENV DB_PASSWORD=x\nARG PUBLIC_KEY\nARG MONKEY\n", "SecretsUsedInArgOrEnv"),
            [
                "Do not use ARG or ENV instructions for sensitive data (ARG \"GITHUB_TOKEN\")",
                "Do not use ARG or ENV instructions for sensitive data (ENV \"DB_PASSWORD\")"
            ]
        );
    }

    #[test]
    fn redundant_target_platform_and_constant_platform() {
        assert_eq!(
            trips("FROM --platform=$TARGETPLATFORM a\n", "RedundantTargetPlatform"),
            ["Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"]
        );
        assert!(trips("FROM --platform=$BUILDPLATFORM a\n", "RedundantTargetPlatform").is_empty());
        assert_eq!(
            trips("FROM --platform=linux/amd64 a\n", "FromPlatformFlagConstDisallowed"),
            ["FROM --platform flag should not use constant value \"linux/amd64\""]
        );
    }

    #[test]
    fn no_empty_continuation() {
        assert_eq!(trips("FROM a\nRUN echo \\\n\n  hi\n", "NoEmptyContinuation"), ["Empty continuation line"]);
        assert!(trips("FROM a\nRUN echo \\\n  hi\n", "NoEmptyContinuation").is_empty());
    }

    #[test]
    fn undefined_var() {
        let src = "FROM busybox AS base\nARG VERSION\nENV APP=/app PATH=$PATH:/x\nCOPY $VERSOIN ${APP} $TARGETARCH /\n\
                   WORKDIR ${HOME:-/root}\nRUN echo $UNSEEN\nFROM base\nCOPY $APP $VERSION /\n";
        assert_eq!(
            trips(src, "UndefinedVar"),
            [
                "Usage of undefined variable '$VERSOIN' (did you mean $VERSION?)",
                "Usage of undefined variable '$TARGETARCH'",
                "Usage of undefined variable '$VERSION'"
            ]
        );
        // An image whose environment is unknown is not judged; scratch has none.
        assert!(trips("FROM alpine\nCOPY $X /\n", "UndefinedVar").is_empty());
        assert_eq!(trips("FROM scratch\nUSER $U\n", "UndefinedVar"), ["Usage of undefined variable '$U'"]);
    }

    #[test]
    fn invalid_default_arg_in_from() {
        assert_eq!(
            trips("ARG TAG\nFROM alpine:${TAG}\n", "InvalidDefaultArgInFrom"),
            ["Default value for ARG alpine:${TAG} results in empty or invalid base image name"]
        );
        assert!(trips("ARG TAG=3.20\nFROM alpine:${TAG}\n", "InvalidDefaultArgInFrom").is_empty());
        assert!(trips("ARG B=build\nFROM scratch AS build\nFROM ${B}\n", "InvalidDefaultArgInFrom").is_empty());
    }

    #[test]
    fn check_directive_skips_rules_and_sets_error() {
        let config = CheckConfig::parse("skip=JSONArgsRecommended,MaintainerDeprecated;error=true").unwrap();
        assert!(config.error);
        let ast = super::super::parser::parse("FROM a\nMAINTAINER me\nCMD x\nWORKDIR rel\n").unwrap();
        let names: Vec<&str> = check(&ast, &config, &test_env).iter().map(|w| w.rule.name).collect();
        assert_eq!(names, ["WorkdirRelativePath"]);
        let all = CheckConfig::parse("skip=all").unwrap();
        assert!(check(&ast, &all, &test_env).is_empty());
        assert!(CheckConfig::parse("error=maybe").unwrap_err().contains("error=maybe"));
    }
}
