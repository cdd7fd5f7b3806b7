//! ARG/ENV scoping and word expansion, applied to exactly the instructions
//! and flags BuildKit expands. The build engine creates an [`Evaluator`] per
//! build and a [`Scope`] per stage, then calls [`Scope::expand`] on each
//! instruction in order, so that values set by earlier ARG/ENV steps apply.

use std::collections::{BTreeMap, HashMap};

use super::error::{Error, ErrorKind, Span};
use super::instructions::{
    Add, ArgDecl, Copy, Dockerfile, Instruction, InstructionKind, KeyValue, Run, SourcesAndDest, Stage,
};
use super::mount;
use super::parser::Heredoc;
use super::shell::{Lexer, Vars};
use crate::platform::Platform;

/// What a build supplies from outside the Dockerfile.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `--build-arg NAME=value`: override ARG defaults where ARG is declared.
    pub build_args: BTreeMap<String, String>,
    /// The platform the image is for (TARGETPLATFORM...).
    pub target_platform: Platform,
    /// The platform the build runs on (BUILDPLATFORM...).
    pub build_platform: Platform,
}

impl BuildOptions {
    pub fn new(target_platform: Platform) -> Self {
        BuildOptions { build_args: BTreeMap::new(), target_platform, build_platform: Platform::host() }
    }
}

/// The automatic platform ARGs, in BuildKit's names.
pub fn platform_args(target: &Platform, build: &Platform) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(8);
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        out.push((format!("{prefix}PLATFORM"), p.to_string()));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((format!("{prefix}VARIANT"), p.variant.clone().unwrap_or_default()));
    }
    out
}

/// Variables in the order they were first set, each name once; setting a
/// name again replaces its value in place. Indexed by name: a Dockerfile
/// may set thousands of variables, and a scan per ENV made it quadratic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VarList {
    pairs: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl VarList {
    /// From (name, value) pairs; a later pair of the same name wins.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut list = VarList::default();
        for (k, v) in pairs {
            list.set(&k, &v);
        }
        list
    }
    pub fn set(&mut self, name: &str, value: &str) {
        match self.index.get(name) {
            Some(&i) => self.pairs[i].1 = value.to_string(),
            None => {
                self.index.insert(name.to_string(), self.pairs.len());
                self.pairs.push((name.to_string(), value.to_string()));
            }
        }
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.pairs[i].1.as_str())
    }
    pub fn iter(&self) -> impl Iterator<Item = &(String, String)> {
        self.pairs.iter()
    }
}

impl Vars for VarList {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// ENV values shadow ARG values of the same name.
struct Layered<'a> {
    env: &'a VarList,
    args: &'a VarList,
}

impl Vars for Layered<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.env.get(name).or_else(|| self.args.get(name))
    }
}

/// Evaluates global ARGs once per build and hands out per-stage scopes.
#[derive(Debug)]
pub struct Evaluator<'a> {
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    lexer: Lexer,
    /// Global ARGs (and the automatic platform ARGs) with their values.
    globals: VarList,
}

impl<'a> Evaluator<'a> {
    pub fn new(df: &'a Dockerfile, opts: &'a BuildOptions) -> Result<Self, Error> {
        let lexer = Lexer::new(df.directives.escape);
        let mut globals = VarList::from_pairs(platform_args(&opts.target_platform, &opts.build_platform));
        for (k, v) in &opts.build_args {
            if globals.get(k).is_some() {
                globals.set(k, v);
            }
        }
        for decl in &df.global_args {
            let expand = |w: &str, vars: &VarList| {
                lexer.process_word(w, vars).map_err(|e| df.error_at(decl.span, ErrorKind::Expansion(e.to_string())))
            };
            let name = expand(&decl.name, &globals)?;
            let value = match (opts.build_args.get(&name), &decl.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(d)) => Some(expand(d, &globals)?),
                (None, None) => None,
            };
            if let Some(v) = value {
                globals.set(&name, &v);
            }
        }
        Ok(Evaluator { df, opts, lexer, globals })
    }

    pub fn dockerfile(&self) -> &'a Dockerfile {
        self.df
    }

    /// Global ARG values (including the platform ARGs), for FROM lines.
    pub fn globals(&self) -> &VarList {
        &self.globals
    }

    /// The stage's base (image reference or stage name) with global ARGs expanded.
    pub fn base_name(&self, stage: &Stage) -> Result<String, Error> {
        let base = self.word(&stage.base, &self.globals, stage.span)?;
        if base.is_empty() {
            let msg = format!("FROM: base name {:?} expands to an empty string", stage.base);
            return Err(self.df.error_at(stage.span, ErrorKind::Expansion(msg)));
        }
        Ok(base)
    }

    /// `FROM --platform=...` expanded and parsed; None means the target platform.
    pub fn stage_platform(&self, stage: &Stage) -> Result<Option<Platform>, Error> {
        let Some(raw) = &stage.platform else { return Ok(None) };
        let text = self.word(raw, &self.globals, stage.span)?;
        text.parse::<Platform>()
            .map(Some)
            .map_err(|e| self.df.error_at(stage.span, ErrorKind::Expansion(format!("FROM --platform={raw}: {e}"))))
    }

    /// A fresh scope for a stage whose base image sets `image_env`.
    pub fn scope(&self, image_env: &[(String, String)]) -> Scope<'_, 'a> {
        Scope { eval: self, env: VarList::from_pairs(image_env.iter().cloned()), args: VarList::default(), declared: Vec::new() }
    }

    fn word(&self, w: &str, vars: &dyn Vars, span: Span) -> Result<String, Error> {
        self.lexer.process_word(w, vars).map_err(|e| self.df.error_at(span, ErrorKind::Expansion(e.to_string())))
    }
}

/// The ARG/ENV state of one stage while its instructions are walked.
#[derive(Debug)]
pub struct Scope<'e, 'a> {
    eval: &'e Evaluator<'a>,
    env: VarList,
    args: VarList,
    declared: Vec<String>,
}

impl Scope<'_, '_> {
    /// The image environment so far (base image ENV plus ENV instructions).
    pub fn env(&self) -> &VarList {
        &self.env
    }

    /// ARGs declared in this stage that have a value.
    pub fn args(&self) -> &VarList {
        &self.args
    }

    /// Names of all ARGs declared in this stage, with or without a value.
    pub fn declared_args(&self) -> &[String] {
        &self.declared
    }

    /// The environment a RUN step sees: ENV, plus ARGs that ENV does not shadow.
    pub fn run_env(&self) -> VarList {
        let mut out = self.env.clone();
        for (k, v) in self.args.iter() {
            if out.get(k).is_none() {
                out.set(k, v);
            }
        }
        out
    }

    /// Expands one word with the current ARG/ENV values.
    pub fn word(&self, w: &str, span: Span) -> Result<String, Error> {
        self.eval.word(w, &Layered { env: &self.env, args: &self.args }, span)
    }

    fn words(&self, w: &str, span: Span) -> Result<Vec<String>, Error> {
        let vars = Layered { env: &self.env, args: &self.args };
        self.eval.lexer.process_words(w, &vars).map_err(|e| self.eval.df.error_at(span, ErrorKind::Expansion(e.to_string())))
    }

    fn opt(&self, w: &Option<String>, span: Span) -> Result<Option<String>, Error> {
        w.as_ref().map(|w| self.word(w, span)).transpose()
    }

    fn all(&self, ws: &[String], span: Span) -> Result<Vec<String>, Error> {
        ws.iter().map(|w| self.word(w, span)).collect()
    }

    /// COPY's and ADD's words (heredoc bodies expand when they are read).
    fn files(&self, f: &SourcesAndDest, span: Span) -> Result<SourcesAndDest, Error> {
        Ok(SourcesAndDest {
            sources: self.all(&f.sources, span)?,
            dest: self.word(&f.dest, span)?,
            chown: self.opt(&f.chown, span)?,
            chmod: self.opt(&f.chmod, span)?,
            exclude: self.all(&f.exclude, span)?,
            ..f.clone()
        })
    }

    /// The body of a heredoc whose delimiter was unquoted, with variables
    /// expanded (quotes and backslashes kept); quoted delimiters give it verbatim.
    pub fn heredoc_content(&self, doc: &Heredoc, span: Span) -> Result<String, Error> {
        if !doc.expand {
            return Ok(doc.content.clone());
        }
        let lexer = Lexer { raw_quotes: true, raw_escapes: true, ..self.eval.lexer };
        let vars = Layered { env: &self.env, args: &self.args };
        lexer.process_word(&doc.content, &vars).map_err(|e| self.eval.df.error_at(span, ErrorKind::Expansion(e.to_string())))
    }

    /// Returns `instr` with its words expanded as BuildKit expands them, and
    /// applies ARG and ENV to this scope.
    pub fn expand(&mut self, instr: &Instruction) -> Result<Instruction, Error> {
        let span = instr.span;
        let kind = match &instr.kind {
            InstructionKind::Run(run) => {
                let mut mounts = Vec::with_capacity(run.mounts.len());
                for m in &run.mounts {
                    let vars = Layered { env: &self.env, args: &self.args };
                    let lexer = self.eval.lexer;
                    let mut exp = |v: &str| lexer.process_word(v, &vars).map_err(|e| e.to_string());
                    let parsed = mount::parse(&m.spec, Some(&mut exp)).map_err(|msg| {
                        let kind = ErrorKind::BadFlag { instruction: "RUN".into(), flag: "--mount".into(), message: msg };
                        self.eval.df.error_at(span, kind)
                    })?;
                    mounts.push(parsed);
                }
                InstructionKind::Run(Run { mounts, ..run.clone() })
            }
            InstructionKind::Copy(c) => InstructionKind::Copy(Copy {
                files: self.files(&c.files, span)?,
                from: self.opt(&c.from, span)?,
                ..c.clone()
            }),
            InstructionKind::Add(a) => InstructionKind::Add(Add {
                files: self.files(&a.files, span)?,
                checksum: self.opt(&a.checksum, span)?,
                ..a.clone()
            }),
            InstructionKind::Env(kvs) => {
                let expanded = self.key_values(kvs, span)?;
                for kv in &expanded {
                    self.env.set(&kv.key, &kv.value);
                }
                InstructionKind::Env(expanded)
            }
            InstructionKind::Label(kvs) => InstructionKind::Label(self.key_values(kvs, span)?),
            InstructionKind::Arg(decls) => {
                let mut out = Vec::with_capacity(decls.len());
                for d in decls {
                    let name = self.word(&d.name, span)?;
                    let default = self.opt(&d.default, span)?;
                    let value = self
                        .eval
                        .opts
                        .build_args
                        .get(&name)
                        .cloned()
                        .or_else(|| default.clone())
                        .or_else(|| self.eval.globals.get(&name).map(str::to_string));
                    if let Some(v) = &value {
                        self.args.set(&name, v);
                    }
                    if !self.declared.contains(&name) {
                        self.declared.push(name.clone());
                    }
                    out.push(ArgDecl { name, default: value, span: d.span });
                }
                InstructionKind::Arg(out)
            }
            InstructionKind::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports {
                    out.extend(self.words(p, span)?);
                }
                InstructionKind::Expose(out)
            }
            InstructionKind::Volume(v) => InstructionKind::Volume(self.all(v, span)?),
            InstructionKind::User(u) => InstructionKind::User(self.word(u, span)?),
            InstructionKind::Workdir(w) => InstructionKind::Workdir(self.word(w, span)?),
            InstructionKind::StopSignal(s) => InstructionKind::StopSignal(self.word(s, span)?),
            // Commands are expanded by the shell at run time; the rest are literal.
            other => other.clone(),
        };
        Ok(Instruction { span, kind })
    }

    fn key_values(&self, kvs: &[KeyValue], span: Span) -> Result<Vec<KeyValue>, Error> {
        kvs.iter()
            .map(|kv| Ok(KeyValue { key: self.word(&kv.key, span)?, value: self.word(&kv.value, span)? }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::instructions::parse;
    use crate::dockerfile::ShellOrExec;

    fn opts(args: &[(&str, &str)]) -> BuildOptions {
        let mut o = BuildOptions::new("linux/arm64".parse().unwrap());
        o.build_platform = "linux/amd64".parse().unwrap();
        o.build_args = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        o
    }

    /// Expands every instruction of a stage from an empty image environment.
    fn walk(df: &Dockerfile, o: &BuildOptions, stage: usize) -> (Vec<InstructionKind>, VarList, VarList) {
        let ev = Evaluator::new(df, o).unwrap();
        let mut scope = ev.scope(&[]);
        let out = df.stages[stage].instructions.iter().map(|i| scope.expand(i).unwrap().kind).collect();
        (out, scope.env().clone(), scope.run_env())
    }

    #[test]
    fn global_args_reach_from_only() {
        let df = parse("ARG TAG=1.0\nARG IMG=alpine:${TAG}\nFROM $IMG AS a\nRUN echo\nWORKDIR /$TAG\n").unwrap();
        let o = opts(&[]);
        let ev = Evaluator::new(&df, &o).unwrap();
        assert_eq!(ev.base_name(&df.stages[0]).unwrap(), "alpine:1.0");
        let (k, _, _) = walk(&df, &o, 0);
        assert_eq!(k[1], InstructionKind::Workdir("/".into()));
    }

    #[test]
    fn redeclared_global_arg_takes_its_value() {
        let df = parse("ARG V=1\nFROM a\nARG V\nWORKDIR /$V\nFROM b\nARG V=2\nWORKDIR /$V\n").unwrap();
        let o = opts(&[]);
        assert_eq!(walk(&df, &o, 0).0[1], InstructionKind::Workdir("/1".into()));
        assert_eq!(walk(&df, &o, 1).0[1], InstructionKind::Workdir("/2".into()));
        let o = opts(&[("V", "9")]);
        assert_eq!(walk(&df, &o, 0).0[1], InstructionKind::Workdir("/9".into()));
        assert_eq!(walk(&df, &o, 1).0[1], InstructionKind::Workdir("/9".into()));
        let ev = Evaluator::new(&df, &o).unwrap();
        assert_eq!(ev.globals().get("V"), Some("9"));
    }

    #[test]
    fn build_args_need_a_declaration() {
        let df = parse("FROM a\nUSER ${U:-nobody}\nARG U\nUSER ${U:-nobody}\n").unwrap();
        let (k, _, _) = walk(&df, &opts(&[("U", "me")]), 0);
        assert_eq!(k[0], InstructionKind::User("nobody".into()));
        assert_eq!(k[2], InstructionKind::User("me".into()));
    }

    #[test]
    fn env_beats_arg() {
        let df = parse("FROM a\nARG X=arg\nENV X=env\nWORKDIR /$X\nENV A=1 B=$X\n").unwrap();
        let (k, env, run_env) = walk(&df, &opts(&[("X", "cli")]), 0);
        assert_eq!(k[2], InstructionKind::Workdir("/env".into()));
        assert_eq!(env.get("B"), Some("env"));
        assert_eq!(run_env.get("X"), Some("env"));
    }

    #[test]
    fn env_pairs_see_the_previous_values() {
        let df = parse("FROM a\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n").unwrap();
        let (_, env, _) = walk(&df, &opts(&[]), 0);
        assert_eq!(env.get("def"), Some("hello"));
        assert_eq!(env.get("ghi"), Some("bye"));
    }

    #[test]
    fn platform_args_are_automatic_in_global_scope() {
        let df = parse("FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETARCH TARGETVARIANT\nRUN GOARCH=$TARGETARCH go build\nWORKDIR /$TARGETARCH$TARGETVARIANT\nUSER $BUILDARCH\n").unwrap();
        let o = opts(&[]);
        let ev = Evaluator::new(&df, &o).unwrap();
        assert_eq!(ev.stage_platform(&df.stages[0]).unwrap(), Some("linux/amd64".parse().unwrap()));
        let (k, _, run_env) = walk(&df, &o, 0);
        assert_eq!(k[2], InstructionKind::Workdir("/arm64".into()));
        assert_eq!(k[3], InstructionKind::User("".into()), "undeclared in the stage");
        assert_eq!(run_env.get("TARGETARCH"), Some("arm64"));
        match &k[1] {
            InstructionKind::Run(r) => assert_eq!(r.command, ShellOrExec::Shell("GOARCH=$TARGETARCH go build".into())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_doubling_env_chain_fails_at_its_line_instead_of_exhausting_memory() {
        let mut text = String::from("FROM scratch\nENV a=x\n");
        text.push_str(&"ENV a=$a$a\n".repeat(31));
        let df = parse(&text).unwrap();
        let o = opts(&[]);
        let ev = Evaluator::new(&df, &o).unwrap();
        let mut scope = ev.scope(&[]);
        let err = df.stages[0].instructions.iter().map(|i| scope.expand(i)).find_map(Result::err).expect("an error");
        // Line n sets 2^(n-2) bytes: line 22 reaches 1 MiB, line 23 would double it.
        assert_eq!(err.pos.line, 23, "{err}");
        assert!(err.to_string().contains("longer than 1 MiB"), "{err}");
        assert_eq!(scope.env().get("a").map(str::len), Some(1 << 20));
    }

    #[test]
    fn expands_exactly_the_expandable_words() {
        let src = "FROM a\nARG D=/dst U=1000 P=8080 S=data\nCOPY --from=$S --chown=$U:$U --chmod=0$U --exclude=*.$S src/$S $D/\n\
ADD --checksum=sha256:$U --chown=$U https://x/$S $D\nEXPOSE $P ${P}/udp\nVOLUME /$S\nSTOPSIGNAL SIG$S\n\
LABEL $S.v=$U\nRUN --mount=type=cache,target=/c/$S,uid=$U echo $S\nCMD echo $S\nHEALTHCHECK CMD echo $S\nONBUILD RUN echo $S\n";
        let df = parse(src).unwrap();
        let (k, _, _) = walk(&df, &opts(&[]), 0);
        let InstructionKind::Copy(c) = &k[1] else { panic!() };
        assert_eq!((c.from.as_deref(), c.files.chown.as_deref(), c.files.chmod.as_deref()), (Some("data"), Some("1000:1000"), Some("01000")));
        let f = &c.files;
        assert_eq!((f.sources.clone(), f.dest.as_str(), f.exclude.clone()), (vec!["src/data".to_string()], "/dst/", vec!["*.data".to_string()]));
        let InstructionKind::Add(a) = &k[2] else { panic!() };
        assert_eq!((a.checksum.as_deref(), a.files.sources[0].as_str()), (Some("sha256:1000"), "https://x/data"));
        assert_eq!(k[3], InstructionKind::Expose(vec!["8080".into(), "8080/udp".into()]));
        assert_eq!(k[4], InstructionKind::Volume(vec!["/data".into()]));
        assert_eq!(k[5], InstructionKind::StopSignal("SIGdata".into()));
        assert_eq!(k[6], InstructionKind::Label(vec![KeyValue { key: "data.v".into(), value: "1000".into() }]));
        let InstructionKind::Run(r) = &k[7] else { panic!() };
        assert_eq!((r.mounts[0].target.as_deref(), r.mounts[0].uid), (Some("/c/data"), Some(1000)));
        assert_eq!(r.command, ShellOrExec::Shell("echo $S".into()));
        assert_eq!(k[8], InstructionKind::Cmd(ShellOrExec::Shell("echo $S".into())));
        assert_eq!(k[10], InstructionKind::Onbuild("RUN echo $S".into()));
    }

    #[test]
    fn expansion_errors_point_at_the_instruction() {
        let df = parse("FROM a\nWORKDIR ${X:?need X}\n").unwrap();
        let o = opts(&[]);
        let ev = Evaluator::new(&df, &o).unwrap();
        let err = ev.scope(&[]).expand(&df.stages[0].instructions[0]).unwrap_err();
        assert_eq!(err.pos.line, 2);
        assert!(err.to_string().contains("need X"), "{err}");
    }

    #[test]
    fn heredoc_bodies_expand_unless_quoted() {
        let df = parse("FROM a\nARG N=world\nCOPY <<A <<'B' /d/\nhi $N \"q\"\nA\nhi $N\nB\n").unwrap();
        let o = opts(&[]);
        let ev = Evaluator::new(&df, &o).unwrap();
        let mut scope = ev.scope(&[]);
        scope.expand(&df.stages[0].instructions[0]).unwrap();
        let InstructionKind::Copy(c) = &df.stages[0].instructions[1].kind else { panic!() };
        let span = df.stages[0].instructions[1].span;
        assert_eq!(scope.heredoc_content(&c.files.heredocs[0], span).unwrap(), "hi world \"q\"\n");
        assert_eq!(scope.heredoc_content(&c.files.heredocs[1], span).unwrap(), "hi $N\n");
    }
}
