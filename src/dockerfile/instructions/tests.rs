use super::*;
use crate::dockerfile::mount::MountType;
use crate::dockerfile::Pos;
use std::time::Duration;

fn one(src: &str) -> InstructionKind {
    let df = parse(&format!("FROM base\n{src}\n")).unwrap();
    df.stages[0].instructions[0].kind.clone()
}

fn err(src: &str) -> Error {
    parse(src).unwrap_err()
}

#[test]
fn from_forms() {
    let df = parse("FROM --platform=linux/arm64 alpine:3 AS Build\nFROM build\nFROM scratch").unwrap();
    let s = &df.stages[0];
    assert_eq!((s.name.as_deref(), s.base.as_str(), s.platform.as_deref()), (Some("build"), "alpine:3", Some("linux/arm64")));
    assert_eq!(df.stages[1].index, 1);
    assert_eq!(df.stages[2].base, "scratch");
    assert!(err("FROM a AS 1x").to_string().contains("invalid stage name"));
    assert!(err("FROM a b").to_string().contains("one or three arguments"));
    assert!(err("FROM a AS x\nFROM b AS X").to_string().contains("duplicate stage name"));
    assert!(err("FROM --plat=x a").to_string().contains("unknown flag --plat"));
}

#[test]
fn run_forms_and_flags() {
    match one("RUN --mount=type=cache,target=/c --mount=type=secret,id=s --network=none --security=insecure make all") {
        InstructionKind::Run(r) => {
            assert_eq!(r.command, ShellOrExec::Shell("make all".into()));
            assert_eq!(r.mounts.iter().map(|m| m.kind).collect::<Vec<_>>(), vec![MountType::Cache, MountType::Secret]);
            assert_eq!((r.network, r.security), (Network::None, Security::Insecure));
        }
        other => panic!("{other:?}"),
    }
    match one("RUN [\"/bin/echo\", \"a b\"]") {
        InstructionKind::Run(r) => {
            assert_eq!(r.command, ShellOrExec::Exec(vec!["/bin/echo".into(), "a b".into()]));
            assert_eq!((r.network, r.security), (Network::Default, Security::Sandbox));
        }
        other => panic!("{other:?}"),
    }
    match one("RUN --network=host [\"a\", 'b']") {
        InstructionKind::Run(r) => assert_eq!(r.command, ShellOrExec::Shell("[\"a\", 'b']".into()), "bad JSON falls back"),
        other => panic!("{other:?}"),
    }
    match one("RUN <<EOF\nset -e\necho hi\nEOF") {
        InstructionKind::Run(r) => {
            assert_eq!(r.command, ShellOrExec::Shell("<<EOF".into()));
            assert_eq!(r.heredocs[0].content, "set -e\necho hi\n");
        }
        other => panic!("{other:?}"),
    }
    assert!(err("FROM a\nRUN --network=bridge x").to_string().contains("unsupported network mode"));
    assert!(err("FROM a\nRUN --security=x y").to_string().contains("unsupported security mode"));
    assert!(err("FROM a\nRUN --mount=type=cache x").to_string().contains("needs a target"));
    assert!(err("FROM a\nRUN").to_string().contains("RUN requires at least one argument"));
    assert!(err("FROM a\nRUN [\"a\", 1]").to_string().contains("must all be strings"));
    assert!(err("FROM a\nRUN --network x").to_string().contains("missing a value"));
}

#[test]
fn cmd_entrypoint_shell() {
    assert_eq!(one("CMD [\"a\"]"), InstructionKind::Cmd(ShellOrExec::Exec(vec!["a".into()])));
    assert_eq!(one("CMD a b"), InstructionKind::Cmd(ShellOrExec::Shell("a b".into())));
    assert_eq!(one("CMD"), InstructionKind::Cmd(ShellOrExec::Exec(vec![])));
    assert_eq!(one("ENTRYPOINT [\"/e\", \"-x\"]"), InstructionKind::Entrypoint(ShellOrExec::Exec(vec!["/e".into(), "-x".into()])));
    assert_eq!(one("ENTRYPOINT exec x"), InstructionKind::Entrypoint(ShellOrExec::Shell("exec x".into())));
    assert_eq!(one("SHELL [\"/bin/bash\", \"-c\"]"), InstructionKind::Shell(vec!["/bin/bash".into(), "-c".into()]));
    assert!(err("FROM a\nSHELL /bin/bash -c").to_string().contains("JSON array"));
    assert!(err("FROM a\nCMD --x a").to_string().contains("unknown flag --x for CMD (it takes no flags)"));
}

#[test]
fn copy_and_add() {
    match one("COPY --from=build --chown=1:2 --chmod=0644 --link --parents --exclude=*.tmp --exclude=.git a b /dst/") {
        InstructionKind::Copy(c) => {
            assert_eq!(c.files.sources, vec!["a", "b"]);
            assert_eq!(c.files.dest, "/dst/");
            assert_eq!((c.from.as_deref(), c.files.chown.as_deref(), c.files.chmod.as_deref()), (Some("build"), Some("1:2"), Some("0644")));
            assert!(c.files.link && c.parents);
            assert_eq!(c.files.exclude, vec!["*.tmp", ".git"]);
        }
        other => panic!("{other:?}"),
    }
    match one("COPY --link=false [\"a b\", \"/d\"]") {
        InstructionKind::Copy(c) => assert_eq!((c.files.sources.clone(), c.files.link, c.parents), (vec!["a b".to_string()], false, false)),
        other => panic!("{other:?}"),
    }
    match one("COPY <<one.txt src << <<-two.txt /d/\n1\none.txt\n\t2\n\ttwo.txt") {
        InstructionKind::Copy(c) => {
            assert_eq!(c.files.sources, vec!["src", "<<"], "a bare << is not a heredoc");
            assert_eq!(c.files.heredocs.iter().map(|h| (h.name.as_str(), h.content.as_str())).collect::<Vec<_>>(), vec![("one.txt", "1\n"), ("two.txt", "2\n")]);
        }
        other => panic!("{other:?}"),
    }
    match one("ADD --checksum=sha256:abc --keep-git-dir --chown=u --chmod=600 --link --unpack=false --exclude=x https://e/x.tgz /d") {
        InstructionKind::Add(a) => {
            assert_eq!(a.checksum.as_deref(), Some("sha256:abc"));
            assert!(a.keep_git_dir && a.files.link);
            assert_eq!(a.unpack, Some(false));
            assert_eq!((a.files.chown.as_deref(), a.files.chmod.as_deref(), a.files.exclude.clone()), (Some("u"), Some("600"), vec!["x".to_string()]));
        }
        other => panic!("{other:?}"),
    }
    assert!(err("FROM a\nCOPY x").to_string().contains("at least two arguments"));
    assert!(err("FROM a\nCOPY --from=a --from=b x y").to_string().contains("more than once"));
    assert!(err("FROM a\nCOPY --link=maybe x y").to_string().contains("expects true or false"));
    assert!(err("FROM a\nADD --from=x a b").to_string().contains("unknown flag --from for ADD"));
}

#[test]
fn env_label_arg() {
    let kv = |k: &str, v: &str| KeyValue { key: k.into(), value: v.into() };
    assert_eq!(one("ENV A=1 B=\"two words\""), InstructionKind::Env(vec![kv("A", "1"), kv("B", "\"two words\"")]));
    assert_eq!(one("ENV LEGACY the rest"), InstructionKind::Env(vec![kv("LEGACY", "the rest")]));
    assert_eq!(one("LABEL a.b=c \"d e\"=f"), InstructionKind::Label(vec![kv("a.b", "c"), kv("\"d e\"", "f")]));
    match one("ARG A B=2 C=") {
        InstructionKind::Arg(a) => assert_eq!(
            a.iter().map(|d| (d.name.as_str(), d.default.as_deref())).collect::<Vec<_>>(),
            vec![("A", None), ("B", Some("2")), ("C", Some(""))]
        ),
        other => panic!("{other:?}"),
    }
    assert!(err("FROM a\nENV A").to_string().contains("ENV must have two arguments"));
    assert!(err("FROM a\nENV A=1 B").to_string().contains("can't find ="));
    assert!(err("FROM a\nARG =x").to_string().contains("names can not be blank"));
    assert!(err("FROM a\nLABEL").to_string().contains("LABEL requires at least one argument"));
    let df = parse("ARG V=1\nARG W\nFROM a:$V").unwrap();
    assert_eq!(df.global_args.len(), 2);
}

#[test]
fn simple_instructions() {
    assert_eq!(one("EXPOSE 80 443/tcp 53/udp"), InstructionKind::Expose(vec!["80".into(), "443/tcp".into(), "53/udp".into()]));
    assert_eq!(one("VOLUME /a /b"), InstructionKind::Volume(vec!["/a".into(), "/b".into()]));
    assert_eq!(one("VOLUME [\"/a b\"]"), InstructionKind::Volume(vec!["/a b".into()]));
    assert_eq!(one("USER app:app"), InstructionKind::User("app:app".into()));
    assert_eq!(one("WORKDIR /srv/app dir"), InstructionKind::Workdir("/srv/app dir".into()));
    assert_eq!(one("STOPSIGNAL SIGTERM"), InstructionKind::StopSignal("SIGTERM".into()));
    assert_eq!(one("MAINTAINER me <me@x>"), InstructionKind::Maintainer("me <me@x>".into()));
    assert_eq!(one("ONBUILD RUN make"), InstructionKind::Onbuild("RUN make".into()));
    assert!(err("FROM a\nWORKDIR").to_string().contains("exactly one argument"));
    assert!(err("FROM a\nEXPOSE").to_string().contains("EXPOSE requires"));
    assert!(err("FROM a\nONBUILD ONBUILD RUN x").to_string().contains("chaining ONBUILD"));
    assert!(err("FROM a\nONBUILD FROM x").to_string().contains("isn't allowed as an ONBUILD trigger"));
    assert!(err("FROM a\nONBUILD COPY x").to_string().contains("COPY requires at least two"));
}

#[test]
fn onbuild_triggers_from_image_config() {
    let i = parse_trigger("RUN make install", '\\').unwrap();
    assert_eq!(i.kind, InstructionKind::Run(Run {
        command: ShellOrExec::Shell("make install".into()),
        mounts: vec![],
        network: Network::Default,
        security: Security::Sandbox,
        heredocs: vec![],
    }));
    assert!(parse_trigger("FROM x", '\\').is_err());
    assert!(parse_trigger("COPY a", '\\').is_err());
}

#[test]
fn healthcheck() {
    assert_eq!(one("HEALTHCHECK NONE"), InstructionKind::Healthcheck(Healthcheck::None));
    assert_eq!(
        one("HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=0s --start-interval=2s --retries=3 CMD curl -f x"),
        InstructionKind::Healthcheck(Healthcheck::Check {
            test: ShellOrExec::Shell("curl -f x".into()),
            interval: Some(Duration::from_secs(90)),
            timeout: Some(Duration::from_millis(500)),
            start_period: Some(Duration::ZERO),
            start_interval: Some(Duration::from_secs(2)),
            retries: Some(3),
        })
    );
    match one("HEALTHCHECK CMD [\"/check\"]") {
        InstructionKind::Healthcheck(Healthcheck::Check { test, interval, .. }) => {
            assert_eq!((test, interval), (ShellOrExec::Exec(vec!["/check".into()]), None))
        }
        other => panic!("{other:?}"),
    }
    assert!(err("FROM a\nHEALTHCHECK CMD").to_string().contains("missing the command"));
    assert!(err("FROM a\nHEALTHCHECK NONE x").to_string().contains("NONE takes no arguments"));
    assert!(err("FROM a\nHEALTHCHECK CONNECT x").to_string().contains("unknown type"));
    assert!(err("FROM a\nHEALTHCHECK --interval=5 CMD x").to_string().contains("invalid duration"));
    assert!(err("FROM a\nHEALTHCHECK --interval=1us CMD x").to_string().contains("minimum of 1ms"));
    assert!(err("FROM a\nHEALTHCHECK --retries=-1 CMD x").to_string().contains("non-negative"));
}

#[test]
fn stage_structure() {
    assert!(err("RUN x\nFROM a").to_string().contains("before the first FROM"));
    assert!(err("ARG A\n").to_string().contains("no FROM"));
    assert!(matches!(*err("").kind, ErrorKind::NoInstructions));
    assert!(matches!(*err("# just a comment\n\n").kind, ErrorKind::NoInstructions));
}

#[test]
fn error_messages_show_line_column_and_caret() {
    let e = err("FROM alpine\nRUN echo ok\nCOPY --chwon=1 a b\n").in_file("app/Dockerfile");
    assert_eq!(e.pos, Pos { line: 3, col: 6 });
    assert_eq!(
        e.to_string(),
        "app/Dockerfile:3:6: unknown flag --chwon for COPY (expected one of --from, --chown, --chmod, --link, --parents, --exclude)\n \
         3 | COPY --chwon=1 a b\n   |      ^"
    );
    let e = err("FROM a\n  RUNN x\n");
    assert_eq!(e.to_string(), "Dockerfile:2:3: unknown instruction: RUNN (did you mean RUN?)\n 2 |   RUNN x\n   |   ^");
    // A flag on a continuation line is reported where it is.
    let e = err("FROM a\nRUN --network=host \\\n    --mount=type=nfs,target=/x \\\n    true\n");
    assert_eq!(e.pos, Pos { line: 3, col: 5 });
    assert!(e.to_string().ends_with(" 3 |     --mount=type=nfs,target=/x \\\n   |     ^"), "{e}");
    let e = err("FROM a\nRUN <<EOF\necho\n");
    assert!(e.to_string().contains("Dockerfile:2:1: unterminated heredoc"), "{e}");
    let e = err("FROM a\nENV X\n");
    assert_eq!(e.pos, Pos { line: 2, col: 5 });
}

