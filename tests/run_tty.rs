//! `kiln run -it` under a pseudo-terminal on the host (util-linux `script`,
//! package bsdutils): a prompt, an echo round trip, Ctrl-C reaching the
//! guest's foreground command, and the shell's exit code.

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::build_env::Env;

/// Everything `script` copied from the terminal so far.
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Screen {
    fn follow(child: &mut Child) -> Screen {
        let mut out = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Screen(seen)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, needle: &str, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !self.text().contains(needle) {
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("never saw {needle:?} on the terminal:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn run_it_gives_an_interactive_shell_on_a_terminal() {
    support::require("script", "bsdutils");
    let env = Env::new();
    env.import_busybox("arm64", "bb");
    let kiln = env!("CARGO_BIN_EXE_kiln");
    // script puts kiln on a fresh pty; the stty gives it a known size.
    let mut script = Command::new("script");
    // After kiln, the terminal must be back in canonical (cooked) mode.
    let line = format!(
        "stty rows 30 cols 90; {kiln} run -it bb sh; code=$?; stty -a | grep -q ' icanon' && echo restored-cooked; exit $code"
    );
    script.args(["-qec", &line, "/dev/null"]);
    for (key, value) in env.kiln().get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let mut child = script.env("TERM", "dumb").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let screen = Screen::follow(&mut child);
    let mut keys = child.stdin.take().unwrap();
    // busybox sh's prompt for root in /.
    screen.wait_for("/ # ", &mut child);
    keys.write_all(b"echo round-$((40+2)); stty size; tty; echo term-$TERM\n").unwrap();
    screen.wait_for("round-42", &mut child);
    screen.wait_for("30 90", &mut child);
    // The first terminal of the container's own devpts, as with docker.
    screen.wait_for("/dev/pts/0", &mut child);
    screen.wait_for("term-xterm", &mut child);
    // Ctrl-C is a byte for the guest's terminal, which interrupts its
    // foreground job (not kiln).
    keys.write_all(b"sleep 100\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    keys.write_all(b"\x03").unwrap();
    keys.write_all(b"echo status-$?\n").unwrap();
    screen.wait_for("status-130", &mut child);
    keys.write_all(b"exit 7\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kiln did not exit after the shell did:\n{}", screen.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(7), "{}", screen.text());
    assert!(screen.text().contains("restored-cooked"), "kiln left the terminal raw:\n{}", screen.text());
    env.assert_tmp_empty();
}

#[test]
fn interactive_tty_needs_a_terminal_on_stdin() {
    let env = Env::new();
    let out = env.kiln().args(["run", "-it", "bb", "sh"]).stdin(Stdio::piped()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the input device is not a TTY"), "{err}");
}
