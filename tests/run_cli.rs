#![cfg(unix)]
//! `kiln run`'s exit statuses and flags as docker run's: the command's own
//! status passed through, 126/127 for a command that cannot start, 125 for
//! kiln's own failures. The arm64 busybox image under TCG.

mod support;

use std::process::Output;

use support::build_env::Env;

const BUSYBOX: &str = "kiln.local/busybox:run";

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_exit_statuses_are_dockers() {
    let env = Env::new();
    env.import_busybox("arm64", BUSYBOX);
    let run = |args: &[&str]| env.kiln().arg("run").args(args).output().unwrap();

    let out = run(&[BUSYBOX, "sh", "-c", "exit 7"]);
    assert_eq!(code(&out), Some(7), "the command's own status: {}", stderr(&out));

    let out = run(&[BUSYBOX, "no-such-command"]);
    assert_eq!(code(&out), Some(127), "not found: {}", stderr(&out));
    assert!(stderr(&out).contains("no-such-command"), "{}", stderr(&out));

    let out = run(&[BUSYBOX, "/etc/passwd"]);
    assert_eq!(code(&out), Some(126), "not executable: {}", stderr(&out));

    // --env-file as docker reads it, -e after it, --rm accepted (and always so).
    let file = env.path("app.env");
    std::fs::write(&file, "# comment\nFROM_FILE=file value \nOVERRIDDEN=file\nHOST_VALUE\n").unwrap();
    let out = env
        .kiln()
        .env("HOST_VALUE", "from kiln")
        .args(["run", "--rm", "--env-file", file.to_str().unwrap(), "-e", "OVERRIDDEN=flag", BUSYBOX])
        .args(["sh", "-c", "echo \"[$FROM_FILE] $OVERRIDDEN $HOST_VALUE\""])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[file value ] flag from kiln\n", "{}", stderr(&out));

    let out = run(&["--pull", "never", "kiln.local/absent:1", "true"]);
    assert_eq!(code(&out), Some(125), "a missing image is kiln's failure: {}", stderr(&out));
    env.assert_tmp_empty();
}
