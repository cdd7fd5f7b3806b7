//! The command line itself, without VMs: exit statuses, output formats,
//! `kiln version`, completions, man pages and help texts.

mod support;

use std::process::Output;

use support::build_env::Env;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn exit_statuses_follow_docker_and_buildx() {
    let env = Env::new();
    // docker run: 125 for its own failures, bad flags included.
    let out = env.kiln().args(["run", "--no-such-flag", "img"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let out = env.kiln().args(["run", "--pull", "never", "kiln.local/absent:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("absent"), "names the image: {}", stderr(&out));
    // buildx build exits 1 when the build fails.
    env.write("Dockerfile", "FROM scratch\nBOGUS x\n");
    let out = env.kiln().args(["build", "--progress", "plain"]).arg(env.ctx()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // --help and --version still succeed.
    assert!(env.kiln().args(["run", "--help"]).output().unwrap().status.success());
    assert!(env.kiln().arg("--version").output().unwrap().status.success());
}
