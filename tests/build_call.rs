//! `kiln build --call targets|outline|check` and `--check`: buildx's
//! subrequests, which read the Dockerfile and start no VM. Output and exit
//! codes are compared with what buildx prints for the same Dockerfile.

use std::process::{Command, Output};

const DOCKERFILE: &str = "\
ARG BASE=busybox
# VERSION the release to build
ARG VERSION=1.0

# build compiles the program
FROM ${BASE} AS build
# GOFLAGS flags for go build
ARG GOFLAGS=-trimpath
RUN --mount=type=secret,id=npmrc,required=true --mount=type=ssh true

FROM build AS test
RUN true

FROM scratch
ARG VERSION
COPY --from=build / /
";

struct Ctx {
    dir: tempfile::TempDir,
}

impl Ctx {
    fn new(dockerfile: &str) -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::create_dir(dir.path().join("ctx")).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("ctx/Dockerfile"), dockerfile).unwrap();
        Ctx { dir }
    }

    fn build(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .env("KILN_DATA_DIR", self.dir.path().join("data"))
            .env("TMPDIR", self.dir.path().join("tmp"))
            .arg("build")
            .args(args)
            .arg(self.dir.path().join("ctx"))
            .output()
            .unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn targets_lists_stages_with_descriptions_and_marks_the_default() {
    let out = Ctx::new(DOCKERFILE).build(&["--call", "targets"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), "TARGET    DESCRIPTION\nbuild     compiles the program\ntest      \n(default) \n");
}

#[test]
fn outline_shows_the_targets_args_secrets_and_ssh() {
    let ctx = Ctx::new(DOCKERFILE);
    let out = ctx.build(&["--call=outline", "--target", "build"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout(&out),
        "TARGET:      build\nDESCRIPTION: compiles the program\n\n\
         BUILD ARG   VALUE       DESCRIPTION\nBASE        busybox     \nGOFLAGS     -trimpath   flags for go build\n\n\
         SECRET   REQUIRED\nnpmrc    true\n\n\
         SSH       REQUIRED\ndefault   \n\n"
    );
    // The default target reads VERSION (its comment is on the global ARG) and, through build, the rest;
    // a --build-arg replaces the default shown.
    let out = ctx.build(&["--call", "outline", "--build-arg", "VERSION=2.0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.starts_with("BUILD ARG   VALUE       DESCRIPTION\n"), "{text}");
    assert!(text.contains("\nVERSION     2.0         the release to build\n"), "{text}");
}

#[test]
fn check_prints_each_warning_as_buildx_and_exits_1() {
    let ctx = Ctx::new("FROM busybox as Build\nCMD echo hi\n");
    let out = ctx.build(&["--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "Check complete, 3 warnings have been found!\n\
         \nWARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/\n\
         'as' and 'FROM' keywords' casing do not match\n\
         Dockerfile:1\n--------------------\n   1 | >>> FROM busybox as Build\n   2 |     CMD echo hi\n   3 |     \n--------------------\n\
         \nWARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
         Stage name 'Build' should be lowercase\n\
         Dockerfile:1\n--------------------\n   1 | >>> FROM busybox as Build\n   2 |     CMD echo hi\n   3 |     \n--------------------\n\
         \nWARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/json-args-recommended/\n\
         JSON arguments recommended for CMD to prevent unintended behavior related to OS signals\n\
         Dockerfile:2\n--------------------\n   1 |     FROM busybox as Build\n   2 | >>> CMD echo hi\n   3 |     \n--------------------\n"
    );
    assert_eq!(stdout(&ctx.build(&["--call", "check"])), stdout(&out), "--check is --call=check");
}

#[test]
fn check_passes_a_clean_dockerfile_and_honours_skip() {
    let out = Ctx::new(DOCKERFILE).build(&["--call", "check"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(stdout(&out), "Check complete, no warnings found.\n");

    let skipped = "# check=skip=JSONArgsRecommended\nFROM busybox\nCMD echo hi\n";
    assert_eq!(stdout(&Ctx::new(skipped).build(&["--check"])), "Check complete, no warnings found.\n");
    let by_arg = Ctx::new("FROM busybox\nCMD echo hi\n").build(&["--check", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=all"]);
    assert!(by_arg.status.success(), "{}", stdout(&by_arg));
}

#[test]
fn undefined_var_is_judged_where_the_base_environment_is_known() {
    // scratch has no environment; an image kiln's store does not have is not guessed at.
    let out = Ctx::new("FROM scratch\nARG VERSION\nCOPY app-$VERSOIN /\nFROM busybox\nCOPY $ANY /\n").build(&["--check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.starts_with("Check complete, 1 warning has been found!\n"), "{text}");
    assert!(
        text.contains("WARNING: UndefinedVar - https://docs.docker.com/go/dockerfile/rule/undefined-var/\n\
                       Usage of undefined variable '$VERSOIN' (did you mean $VERSION?)\nDockerfile:3\n"),
        "{text}"
    );
}

#[test]
fn a_build_lists_the_failed_checks_at_the_end_and_check_error_fails_it() {
    // FROM scratch + COPY from the context builds without a VM.
    let ctx = Ctx::new("FROM scratch\nCOPY f /\nCMD echo hi\n");
    std::fs::write(ctx.dir.path().join("ctx/f"), "x").unwrap();
    let out = ctx.build(&["--progress", "plain"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.ends_with("1 warning found:\n - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 3)\n"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&ctx.build(&["-q"]).stderr).contains("warning found"), "-q prints no summary");

    std::fs::write(ctx.dir.path().join("ctx/Dockerfile"), "# check=error=true\nFROM scratch\nCOPY f /\nCMD echo hi\n").unwrap();
    let out = ctx.build(&["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lint violation found for rules: JSONArgsRecommended"), "{err}");
    assert!(!err.contains("COPY f /"), "the build did not start: {err}");
}

#[test]
fn an_unknown_call_and_a_broken_dockerfile_are_clear_errors() {
    let out = Ctx::new(DOCKERFILE).build(&["--call", "lints"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--call lints: unknown method; expected build, check, outline or targets"), "{err}");

    let out = Ctx::new("FROM busybox\nRUN <<EOF\nnever closed\n").build(&["--check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Dockerfile:2:1: unterminated heredoc"), "{err}");

    let out = Ctx::new(DOCKERFILE).build(&["--call", "outline", "--target", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("target stage \"nope\" could not be found"));
}
