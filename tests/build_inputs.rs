#![cfg(unix)]
//! Build inputs besides the local context directory: `--build-context`
//! (directories, images, OCI layouts, git), git, tarball and stdin contexts,
//! ADD of a git repository. All without a VM (COPY and FROM only) but
//! `run_mount_from_a_named_context`; the git and tarball servers are python3
//! on 127.0.0.1 over HTTPS with a test CA.

mod support;

use std::path::Path;

use support::build_env::Env;

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fails(env: &Env, args: &[&str]) -> String {
    let out = env.kiln().args(args).output().unwrap();
    assert!(!out.status.success(), "kiln {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn copy_from_a_directory_context_honours_its_dockerignore_and_root() {
    let env = Env::new();
    let src = env.path("src");
    write(&src, "lib/a.txt", "from the named context");
    write(&src, "secret.key", "hidden");
    write(&src, ".dockerignore", "*.key\n");
    std::os::unix::fs::symlink("/etc", src.join("etc-link")).unwrap();
    let ctx = env.ctx();
    env.write("Dockerfile", "FROM scratch\nCOPY --from=src / /src/\nCOPY local.txt /\n");
    env.write("local.txt", "main context");
    let spec = format!("src={}", src.display());
    let out = env.path("out");
    env.ok(&["build", "--progress", "plain", "--build-context", &spec, "-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(read(&out.join("src/lib/a.txt")), "from the named context");
    assert_eq!(read(&out.join("local.txt")), "main context");
    assert!(!out.join("src/secret.key").exists(), "the named context's own .dockerignore applies");
    assert!(!out.join("src/Dockerfile").exists(), "the main context's files are not the named one's");

    // A link out of the named context resolves inside it: the host's /etc is never read.
    write(&src, "etc/hostname", "inside the named context");
    env.write("Dockerfile", "FROM scratch\nCOPY --from=src etc-link/hostname /h\n");
    let out2 = env.path("out2");
    env.ok(&["build", "--progress", "plain", "--build-context", &spec, "-o", out2.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(read(&out2.join("h")), "inside the named context");
    std::fs::remove_dir_all(src.join("etc")).unwrap();
    let err = fails(&env, &["build", "--progress", "plain", "--build-context", &spec, ctx.to_str().unwrap()]);
    assert!(err.contains("Dockerfile:2") && err.contains("etc-link/hostname\": not found"), "{err}");
    env.assert_tmp_empty();
}

#[test]
fn from_is_replaced_by_an_oci_layout_an_image_or_a_directory() {
    let env = Env::new();
    // The base: an image saved as an OCI layout, then dropped from the store.
    let base = env.path("base");
    write(&base, "Dockerfile", "FROM scratch\nCOPY marker /marker\n");
    write(&base, "marker", "from the layout");
    env.ok(&["build", "--progress", "plain", "--platform", "linux/arm64", "-t", "test/base:v1", base.to_str().unwrap()]);
    let layout = env.path("layout");
    env.ok(&["save", "--format", "oci-dir", "-o", layout.to_str().unwrap(), "test/base:v1"]);
    env.ok(&["rmi", "test/base:v1"]);

    let ctx = env.ctx();
    env.write("Dockerfile", "FROM alpine\nCOPY extra /extra\n");
    env.write("extra", "added");
    let out = env.path("out");
    let layout_spec = format!("alpine=oci-layout://{}:v1", layout.display());
    env.ok(&["build", "--progress", "plain", "--platform", "linux/arm64", "--build-context", &layout_spec, "-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(read(&out.join("marker")), "from the layout", "FROM alpine read the layout, not a registry");
    assert_eq!(read(&out.join("extra")), "added");

    // The layout without a tag: its only image; a tag it lacks is named in the error.
    let plain = format!("alpine=oci-layout://{}", layout.display());
    env.ok(&["build", "--progress", "plain", "--platform", "linux/arm64", "--build-context", &plain, "-o", env.path("out2").to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(read(&env.path("out2/marker")), "from the layout");
    let wrong = format!("alpine=oci-layout://{}:v2", layout.display());
    let err = fails(&env, &["build", "--progress", "plain", "--platform", "linux/arm64", "--build-context", &wrong, ctx.to_str().unwrap()]);
    assert!(err.contains("--build-context alpine") && err.contains("\"v2\""), "{err}");

    // docker-image:// from the local store.
    env.ok(&["load", "-i", layout.to_str().unwrap()]);
    env.ok(&["tag", "test/base:v1", "test/renamed:1"]);
    env.write("Dockerfile", "FROM alpine AS base\nFROM scratch\nCOPY --from=base /marker /copied\n");
    let out3 = env.path("out3");
    env.ok(&[
        "build", "--progress", "plain", "--platform", "linux/arm64",
        "--build-context", "alpine=docker-image://test/renamed:1",
        "-o", out3.to_str().unwrap(), ctx.to_str().unwrap(),
    ]);
    assert_eq!(read(&out3.join("copied")), "from the layout");

    // A directory replaces a stage of its name; the stage's own steps never run.
    let dir = env.path("dirctx");
    write(&dir, "from-dir", "dir");
    env.write("Dockerfile", "FROM scratch AS builder\nCOPY does-not-exist /\nFROM builder\nCOPY extra /extra\n");
    let out4 = env.path("out4");
    let spec = format!("builder={}", dir.display());
    env.ok(&["build", "--progress", "plain", "--build-context", &spec, "-o", out4.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(read(&out4.join("from-dir")), "dir");
    assert_eq!(read(&out4.join("extra")), "added");
    env.assert_tmp_empty();
}

#[test]
fn bad_build_contexts_name_the_flag() {
    let env = Env::new();
    env.write("Dockerfile", "FROM scratch\n");
    let ctx = env.ctx();
    let missing = env.path("missing");
    for (spec, why) in [
        (format!("src={}", missing.display()), missing.display().to_string()),
        ("src".to_string(), "expected name=VALUE".to_string()),
        (format!("src=oci-layout://{}", missing.display()), "not an OCI layout".to_string()),
    ] {
        let err = fails(&env, &["build", "--build-context", &spec, ctx.to_str().unwrap()]);
        assert!(err.contains(&format!("--build-context {spec}")) && err.contains(&why), "{spec}: {err}");
    }
}

/// A python3 HTTPS file server on 127.0.0.1 over `root`, killed on drop.
struct HttpsServer {
    child: std::process::Child,
    port: u16,
}

impl HttpsServer {
    fn start(root: &Path, ca: &support::TestCa) -> Self {
        support::require("python3", "python3");
        let script = r#"
import functools, http.server, ssl, sys
root, cert, key = sys.argv[1:4]
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(root)
            .arg(ca.server_cert())
            .arg(ca.server_key())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the test server did not start: {line:?}"));
        HttpsServer { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    support::require("git", "git");
    let mut cmd = std::process::Command::new("git");
    cmd.current_dir(dir).args(args).env("GIT_CONFIG_NOSYSTEM", "1").env("HOME", dir);
    support::run(cmd.env("GIT_AUTHOR_NAME", "t").env("GIT_AUTHOR_EMAIL", "t@e").env("GIT_COMMITTER_NAME", "t").env("GIT_COMMITTER_EMAIL", "t@e"))
}

/// A repository served by dumb HTTP: tag v1 has app/f.txt = v1, main has v2.
/// Returns the commit of v1.
fn served_repo(env: &Env) -> String {
    let work = env.path("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    write(&work, "app/Dockerfile", "FROM scratch\nCOPY . /ctx/\n");
    write(&work, "app/f.txt", "v1");
    write(&work, "app/ignored.txt", "no");
    write(&work, "app/.dockerignore", "ignored.txt\n");
    write(&work, "top.txt", "top");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "one"]);
    git(&work, &["tag", "v1"]);
    let v1 = git(&work, &["rev-parse", "HEAD"]).trim().to_string();
    write(&work, "app/f.txt", "v2");
    git(&work, &["commit", "-qam", "two"]);
    let srv = env.path("srv");
    std::fs::create_dir(&srv).unwrap();
    git(&srv, &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"]);
    git(&srv.join("repo.git"), &["update-server-info"]);
    v1
}

#[test]
fn a_git_context_over_https_is_checked_out_at_its_ref() {
    let env = Env::new();
    let ca = support::TestCa::new();
    let v1 = served_repo(&env);
    let server = HttpsServer::start(&env.path("srv"), &ca);
    let build = |spec: &str, extra: &[&str], out: &str| {
        let out = env.path(out);
        let mut cmd = env.kiln();
        cmd.env("GIT_SSL_CAINFO", ca.ca()).args(["build", "--progress", "plain"]).args(extra).arg("-o").arg(&out).arg(spec);
        let o = cmd.output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned(), out)
    };
    let repo = server.url("repo.git");
    for (fragment, want) in [("#v1:app", "v1"), ("#main:app", "v2"), (&*format!("#{v1}:app"), "v1")] {
        let (ok, log, out) = build(&format!("{repo}{fragment}"), &[], &format!("out-{want}-{}", fragment.len()));
        assert!(ok, "{fragment}: {log}");
        assert_eq!(read(&out.join("ctx/f.txt")), want, "{fragment}");
        assert!(!out.join("ctx/.git").exists(), ".git is not part of the context");
        assert!(!out.join("ctx/ignored.txt").exists(), "the checkout's .dockerignore applies");
        assert!(!out.join("ctx/top.txt").exists(), "only the subdir is the context");
        assert!(log.contains("at commit "), "{log}");
    }
    // The repository's root with -f inside it; the default ref is the remote's HEAD.
    let (ok, log, out) = build(&repo, &["-f", "app/Dockerfile"], "out-root");
    assert!(ok, "{log}");
    assert_eq!(read(&out.join("ctx/app/f.txt")), "v2");
    assert_eq!(read(&out.join("ctx/top.txt")), "top");

    // A git repository as a named context.
    env.write("Dockerfile", "FROM scratch\nCOPY --from=src f.txt /named.txt\n");
    let spec = format!("src={repo}#v1:app");
    let (ok, log, out) = build(env.ctx().to_str().unwrap(), &["--build-context", &spec], "out-named");
    assert!(ok, "{log}");
    assert_eq!(read(&out.join("named.txt")), "v1");

    // A ref the repository lacks, and a subdir out of it: clear errors, nothing left behind.
    let (ok, log, _) = build(&format!("{repo}#nope"), &[], "out-bad");
    assert!(!ok && log.contains("git fetch failed") && log.contains("nope"), "{log}");
    let (ok, log, _) = build(&format!("{repo}#main:../.."), &[], "out-bad2");
    assert!(!ok && log.contains("inside the repository"), "{log}");
    env.assert_tmp_empty();
}

fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn a_tarball_url_and_a_tar_on_stdin_are_contexts() {
    let env = Env::new();
    let ca = support::TestCa::new();
    let srv = env.path("srv");
    std::fs::create_dir(&srv).unwrap();
    let good = tar_gz(&[("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"), ("sub/f.txt", "from the tarball"), (".dockerignore", "skip.txt\n"), ("skip.txt", "no")]);
    std::fs::write(srv.join("ctx.tar.gz"), &good).unwrap();
    std::fs::write(srv.join("evil.tar.gz"), tar_gz(&[("Dockerfile", "FROM scratch\n"), ("../../escaped", "x")])).unwrap();
    std::fs::write(srv.join("Dockerfile.txt"), "FROM scratch\nCOPY <<EOF /only\njust a Dockerfile\nEOF\n").unwrap();
    let server = HttpsServer::start(&srv, &ca);

    let out = env.path("out");
    let mut cmd = env.kiln();
    cmd.env("SSL_CERT_FILE", ca.ca()).args(["build", "--progress", "plain", "-o"]).arg(&out).arg(server.url("ctx.tar.gz"));
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&out.join("ctx/sub/f.txt")), "from the tarball");
    assert!(!out.join("ctx/skip.txt").exists(), "the archive's .dockerignore applies");

    // A URL of a plain file is the Dockerfile, with an empty context.
    let out2 = env.path("out2");
    let mut cmd = env.kiln();
    cmd.env("SSL_CERT_FILE", ca.ca()).args(["build", "--progress", "plain", "-o"]).arg(&out2).arg(server.url("Dockerfile.txt"));
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&out2.join("only")), "just a Dockerfile\n");

    // An entry that climbs out is refused, and nothing is written outside.
    let mut cmd = env.kiln();
    cmd.env("SSL_CERT_FILE", ca.ca()).args(["build", "--progress", "plain"]).arg(server.url("evil.tar.gz"));
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("outside"), "{err}");
    assert!(!env.path("escaped").exists() && !env.path("tmp/escaped").exists());

    // The same archive on stdin (buildx sniffs it), -f inside it.
    let out3 = env.path("out3");
    let mut child = env
        .kiln()
        .args(["build", "--progress", "plain", "-f", "Dockerfile", "-o"])
        .arg(&out3)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &good).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&out3.join("ctx/sub/f.txt")), "from the tarball");

    // Text on stdin is still the Dockerfile, with an empty context.
    let out4 = env.path("out4");
    let mut child = env
        .kiln()
        .args(["build", "--progress", "plain", "-o"])
        .arg(&out4)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"FROM scratch\nCOPY <<EOF /note\nstdin\nEOF\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&out4.join("note")), "stdin\n");
    env.assert_tmp_empty();
}

#[test]
fn add_of_a_git_url_copies_the_checkout() {
    let env = Env::new();
    let ca = support::TestCa::new();
    served_repo(&env);
    let server = HttpsServer::start(&env.path("srv"), &ca);
    let repo = server.url("repo.git");
    env.write("Dockerfile", &format!("FROM scratch\nADD {repo}#v1 /src\nADD --keep-git-dir=true {repo} /withgit/\n"));
    let build = |out: &str| {
        let mut cmd = env.kiln();
        cmd.env("GIT_SSL_CAINFO", ca.ca()).args(["build", "--progress", "plain", "-o"]).arg(env.path(out)).arg(env.ctx());
        let o = cmd.output().unwrap();
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{log}");
        log
    };
    let first = build("out");
    let out = env.path("out");
    assert_eq!(read(&out.join("src/app/f.txt")), "v1", "the tag's tree");
    assert_eq!(read(&out.join("src/app/ignored.txt")), "no", "a checkout has no .dockerignore rules (as BuildKit)");
    assert!(!out.join("src/.git").exists(), ".git goes without --keep-git-dir");
    assert_eq!(read(&out.join("withgit/app/f.txt")), "v2", "no ref: the remote's HEAD");
    assert!(out.join("withgit/.git/HEAD").is_file(), "--keep-git-dir=true keeps .git");
    assert!(!first.contains("CACHED"), "{first}");
    // Fetched again, the same files: the ADD is a cache hit (the key is the content's, not the URL's).
    let second = build("out2");
    assert!(second.contains(&format!("#2 [2/3] ADD {repo}#v1 /src\n#2 CACHED")), "{second}");

    env.write("Dockerfile", &format!("FROM scratch\nADD {repo}#v1 local.txt /src\n"));
    env.write("local.txt", "x");
    let o = env.kiln().env("GIT_SSL_CAINFO", ca.ca()).args(["build", "--progress", "plain"]).arg(env.ctx()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("Dockerfile:2") && err.contains("only source"), "{err}");
    env.assert_tmp_empty();
}

#[test]
fn sigterm_during_a_clone_stops_git_and_removes_the_temp_clone() {
    use support::processes::{alive, children_of, wait_gone};
    let env = Env::new();
    // A server that accepts and never answers: git waits until stopped.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let mut kiln = env
        .kiln()
        .args(["build", "--progress", "plain", &format!("http://127.0.0.1:{port}/repo.git")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for git and its transport helper.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let descendants = loop {
        let git: Vec<u32> = children_of(kiln.id());
        let helpers: Vec<u32> = git.iter().flat_map(|&g| children_of(g)).collect();
        if !helpers.is_empty() {
            break [git, helpers].concat();
        }
        assert!(std::time::Instant::now() < deadline, "git never started its transport helper");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(std::fs::read_dir(env.path("tmp")).unwrap().next().is_some(), "the clone's temp dir exists while git runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(kiln.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = std::time::Instant::now();
    let status = kiln.wait().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "kiln took {:?} to stop", started.elapsed());
    assert_eq!(status.code(), Some(143), "128 + SIGTERM");
    wait_gone(&descendants, std::time::Duration::from_secs(5));
    assert!(descendants.iter().all(|&p| !alive(p)));
    env.assert_tmp_empty();
}

#[test]
fn run_mount_from_a_named_context() {
    let env = Env::new();
    env.import_busybox("arm64", "kiln.local/busybox:test");
    let src = env.path("src");
    write(&src, "f.txt", "mounted from the named context");
    env.write("Dockerfile", "FROM base\nRUN --mount=from=src,target=/m cat /m/f.txt > /copied\n");
    let out = env.path("out");
    let spec = format!("src={}", src.display());
    env.ok(&[
        "build", "--progress", "plain", "--platform", "linux/arm64",
        "--build-context", "base=docker-image://kiln.local/busybox:test",
        "--build-context", &spec,
        "-o", out.to_str().unwrap(), env.ctx().to_str().unwrap(),
    ]);
    assert_eq!(read(&out.join("copied")), "mounted from the named context");
    assert!(out.join("bin/busybox").exists(), "FROM base is the busybox image");
}
