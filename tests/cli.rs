#![cfg(unix)]
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

#[test]
fn images_formats_and_quiet() {
    let env = Env::new();
    env.import_busybox("arm64", "kiln.local/busybox:one");
    env.ok(&["tag", "kiln.local/busybox:one", "busybox:two"]);

    let json = stdout(&env.ok(&["images", "--format", "json"]));
    let rows: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{json}");
    let two = rows.iter().find(|r| r["Tag"] == "two").expect("busybox:two listed");
    assert_eq!(two["Repository"], "busybox", "docker.io/library/ is left out as docker does");
    assert_eq!(two["Platform"], "linux/arm64");
    assert!(two["CreatedSince"].as_str().unwrap().ends_with(" ago"), "{two}");
    assert!(two["CreatedAt"].as_str().unwrap().ends_with(" +0000 UTC"), "{two}");
    assert!(two["Size"].as_str().unwrap().ends_with("MB"), "{two}");
    let id = two["ID"].as_str().unwrap();
    assert_eq!(id.len(), 12);
    assert!(two["Digest"].as_str().unwrap().starts_with(&format!("sha256:{id}")), "{two}");

    // Two names of one image: its ID once.
    assert_eq!(stdout(&env.ok(&["images", "-q"])), format!("{id}\n"));

    let names = stdout(&env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, ["busybox:two", "kiln.local/busybox:one"]);

    let table = stdout(&env.ok(&["images", "--format", r"table {{.Repository}}\t{{.ID}}"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "REPOSITORY           IMAGE ID", "columns 3 apart, as docker's: {table}");
    assert!(lines.contains(&format!("kiln.local/busybox   {id}").as_str()), "{table}");
    assert!(stdout(&env.ok(&["images", "--format", "table"])).starts_with("NAME "));

    let out = env.kiln().args(["images", "--format", "{{.Bogus}}"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("{{.Bogus}} is not supported"), "{}", stderr(&out));
}

const PLATFORMS: [&str; 9] = [
    "linux/amd64",
    "linux/arm64",
    "linux/386",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/arm/v5",
    "linux/riscv64",
    "linux/ppc64le",
    "linux/s390x",
];

#[test]
fn version_lists_platforms_kernels_agents_and_emulators() {
    let env = Env::new();
    let text = stdout(&env.ok(&["version"]));
    assert!(text.starts_with(&format!("kiln {}", env!("CARGO_PKG_VERSION"))), "{text}");
    for platform in PLATFORMS {
        let line = text.lines().find(|l| l.starts_with(&format!("{platform} "))).unwrap_or_else(|| panic!("{platform} missing:\n{text}"));
        assert!(line.contains("linux-image-"), "a pinned kernel: {line}");
    }
    // The machine the tests run on has QEMU (scripts/setup-host.sh).
    let aarch64 = text.lines().find(|l| l.starts_with("qemu-system-aarch64 ")).expect("the arm64 emulator is listed");
    assert!(aarch64.contains("QEMU emulator version "), "{aarch64}");

    let json: serde_json::Value = serde_json::from_slice(&env.ok(&["version", "--format", "json"]).stdout).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    let listed: Vec<&str> = json["platforms"].as_array().unwrap().iter().map(|p| p["platform"].as_str().unwrap()).collect();
    assert_eq!(listed, PLATFORMS);
    let arm64 = &json["platforms"][1];
    // The agent digest is the embedded agent's (built into the binary from target/agents).
    let agent = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/target/agents/kiln-agent-arm64"));
    if let Ok(agent) = agent {
        use sha2::Digest;
        assert_eq!(arm64["agent"], format!("sha256:{}", hex::encode(sha2::Sha256::digest(&agent))));
    }
    let emulators = json["emulators"].as_array().unwrap();
    assert!(emulators.iter().any(|e| e["binary"] == "qemu-system-s390x" && e["version"].as_str().unwrap().starts_with("QEMU emulator version")));

    // Without QEMU on PATH each emulator says how to install it.
    let empty = env.path("tmp");
    let out = env.kiln().env("PATH", &empty).env_remove("KILN_QEMU_DIR").arg("version").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let arm = text.lines().find(|l| l.starts_with("qemu-system-arm ")).unwrap();
    assert!(arm.contains("not found") && arm.contains("apt-get install") && arm.contains("qemu-system-arm"), "{arm}");
}

/// The visible commands, as `kiln --help` lists them.
fn subcommands(env: &Env) -> Vec<String> {
    commands_in(&stdout(&env.ok(&["--help"])))
}

/// The commands a `--help` text lists.
fn commands_in(help: &str) -> Vec<String> {
    let Some(commands) = help.split("Commands:").nth(1) else { return Vec::new() };
    let commands = commands.split("\n\n").next().unwrap();
    // Continuation lines of a wrapped description are indented further.
    let names = commands.lines().filter(|l| l.starts_with("  ") && !l.starts_with("   "));
    names.filter_map(|l| l.split_whitespace().next()).filter(|c| *c != "help").map(str::to_string).collect()
}

#[test]
fn bash_completion_knows_every_command_and_parses() {
    let env = Env::new();
    let script = stdout(&env.ok(&["completion", "bash"]));
    let commands = subcommands(&env);
    assert!(commands.len() > 20, "{commands:?}");
    for c in &commands {
        assert!(script.contains(&format!("kiln,{c})")), "no completion for {c}");
    }
    assert!(script.contains("--platform") && script.contains("complete -F"), "flags and the registration");
    let file = env.path("kiln.bash");
    std::fs::write(&file, &script).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", stderr(&check));
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        assert!(stdout(&env.ok(&["completion", shell])).contains("imagetools"), "{shell}");
    }
    let out = env.kiln().args(["completion", "tcsh"]).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("tcsh"), "{}", stderr(&out));
}

#[test]
fn man_pages_for_every_command_render() {
    let env = Env::new();
    let dir = env.path("man");
    env.ok(&["man", "--dir", dir.to_str().unwrap()]);
    let mut pages = vec!["kiln.1".to_string(), "kiln-imagetools-create.1".into(), "kiln-vm-exec.1".into()];
    pages.extend(subcommands(&env).iter().map(|c| format!("kiln-{c}.1")));
    for page in &pages {
        let path = dir.join(page);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH ") && text.contains(".SH NAME") && text.contains(".SH SYNOPSIS") && text.contains(".SH EXAMPLES"), "{page}:\n{text}");
    }
    assert!(!dir.join("kiln-debug.1").exists(), "hidden commands get no page");
    // groff (man's formatter) renders them without warnings.
    let groff = std::process::Command::new("groff").args(["-man", "-Tascii", "-ww", "-P-cbou"]).arg(dir.join("kiln-run.1")).output();
    match groff {
        Ok(out) => {
            assert!(out.status.success() && out.stderr.is_empty(), "groff: {}", stderr(&out));
            let text = stdout(&out);
            assert!(text.contains("--env-file") || text.contains("--publish"), "{text}");
        }
        Err(e) => eprintln!("groff is not installed ({e}); checked the pages' structure only"),
    }
    assert!(stdout(&env.ok(&["man"])).contains(".TH kiln 1"), "kiln.1 on standard output");
}

#[test]
fn every_command_help_has_examples() {
    let env = Env::new();
    let mut pending = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let help = stdout(&env.ok(&path.iter().map(String::as_str).chain(["--help"]).collect::<Vec<_>>()));
        let examples = help.split("\nExamples:\n").nth(1).unwrap_or_else(|| panic!("`kiln {}` --help has no Examples:\n{help}", path.join(" ")));
        assert!(examples.lines().any(|l| l.contains(&format!("kiln {}", path.join(" ")).trim_end().to_string())), "{help}");
        for sub in commands_in(&help) {
            pending.push(path.iter().cloned().chain([sub]).collect());
        }
        seen += 1;
    }
    assert!(seen > 25, "walked {seen} commands");
}

#[test]
fn run_refuses_what_it_cannot_do_and_bad_env_files() {
    let env = Env::new();
    let run = |args: &[&str]| env.kiln().arg("run").args(args).output().unwrap();
    let out = run(&["-d", "img"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("-d is not supported"), "{}", stderr(&out));
    let out = run(&["--rm=false", "img"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("--rm=false is not supported"), "{}", stderr(&out));

    let file = env.path("app.env");
    std::fs::write(&file, "# settings\nA=1\nnot a variable\n").unwrap();
    let out = run(&["--env-file", file.to_str().unwrap(), "img"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains(&format!("{}:3: variable name \"not a variable\" contains whitespace", file.display())), "{}", stderr(&out));
    let out = run(&["--env-file", "/nonexistent/app.env", "img"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("/nonexistent/app.env"), "{}", stderr(&out));
}

#[test]
fn buildkit_progress_sets_the_default_mode_and_failures_show_the_error_block() {
    let env = Env::new();
    env.write("Dockerfile", "FROM scratch\nCOPY missing.txt /\n");
    let build = |vars: &[(&str, &str)], args: &[&str]| {
        let out = env.kiln().envs(vars.iter().copied()).arg("build").args(args).arg(env.ctx()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        stderr(&out)
    };
    let plain = build(&[("BUILDKIT_PROGRESS", "plain")], &[]);
    assert!(plain.contains("#2 [2/2] COPY missing.txt /\n#2 ERROR: COPY failed: \"/missing.txt\": not found\n------\n > [2/2] COPY missing.txt /:\n------\n"), "{plain}");
    let json = build(&[("BUILDKIT_PROGRESS", "rawjson")], &[]);
    // buildx's rawjson: one SolveStatus per line (the final error after them).
    let statuses: Vec<serde_json::Value> = json.lines().map_while(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(statuses[0]["vertexes"][0]["name"], "[1/2] FROM scratch", "{json}");
    let failed = statuses.iter().filter_map(|s| s["vertexes"][0]["error"].as_str()).collect::<Vec<_>>();
    assert_eq!(failed, [r#"COPY failed: "/missing.txt": not found"#], "{json}");
    // The flag wins over the variable.
    let flag = build(&[("BUILDKIT_PROGRESS", "rawjson")], &["--progress", "plain"]);
    assert!(flag.starts_with("#1 [1/2] FROM scratch"), "{flag}");
}
