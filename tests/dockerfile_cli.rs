//! The hidden `kiln debug` Dockerfile commands, run as a user would.

use std::io::Write;
use std::process::{Command, Stdio};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn dump_ignores_heredoc_bodies_and_keeps_instruction_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Dockerfile");
    std::fs::write(&file, "FROM alpine\nRUN <<EOF\necho hi\nEOF\nCOPY --chmod=755 <<a.sh <<b.sh /bin/\nx\na.sh\ny\nb.sh\n").unwrap();
    let out = kiln().args(["debug", "dockerfile-dump"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "(from \"alpine\")\n(run \"<<EOF\")\n(copy [\"--chmod=755\"] \"<<a.sh\" \"<<b.sh\" \"/bin/\")\n"
    );
}

#[test]
fn parse_errors_name_file_line_and_column_with_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Dockerfile");
    std::fs::write(&file, "FROM alpine\nRUN <<EOF\necho never closed\n").unwrap();
    let out = kiln().args(["debug", "dockerfile-dump"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&format!("{}:2:1: unterminated heredoc", file.display())), "{err}");
    assert!(err.contains(" 2 | RUN <<EOF\n   | ^"), "{err}");
}

#[test]
fn expand_jsonl_answers_one_line_per_request() {
    let mut child = kiln()
        .args(["debug", "expand", "--jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let requests = concat!(
        r#"{"id":"1","mode":"envvar","input":"a${X:-b}'$X'","env":{"X":""}}"#,
        "\n",
        r#"{"mode":"words","input":"x${S}y","env":{"S":"1  2"}}"#,
        "\n",
        r#"{"mode":"envvar","input":"${X:?unset}","env":{}}"#,
        "\n"
    );
    child.stdin.take().unwrap().write_all(requests.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], serde_json::json!({"ok": true, "output": "ab$X"}));
    assert_eq!(lines[1], serde_json::json!({"ok": true, "output": ["x1", "2y"]}));
    assert_eq!(lines[2]["ok"], false);
    assert!(lines[2]["error"].as_str().unwrap().contains("X: unset"));
}
