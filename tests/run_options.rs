//! What `kiln build` gives every RUN besides its Dockerfile: `--add-host`,
//! `--shm-size`, `--ulimit` (seen by the command, in the cache key, never in
//! a layer), and cache mounts' `sharing`, `mode`, `uid` and `gid`. Built for
//! linux/arm64 from the busybox fixture; layers read on the host.

#![cfg(unix)]

use std::io::Read;
use std::path::Path;
use std::process::Output;

mod support;
use support::build_env::Env;

const BUSYBOX: &str = "kiln.local/busybox:test";

fn build(env: &Env, ctx: &Path, extra: &[&str]) -> Output {
    let mut cmd = env.kiln();
    cmd.args(["build", "--progress", "plain", "--platform", "linux/arm64"]).args(extra).arg(ctx);
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The top layer of `image`: each entry's path and, for files, contents.
fn top_layer(env: &Env, image: &str) -> Vec<(String, String)> {
    let layout = env.path("top-layer");
    let _ = std::fs::remove_dir_all(&layout);
    env.ok(&["save", "--format", "oci-dir", "-o", layout.to_str().unwrap(), image]);
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json = |path: std::path::PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(blob(&layer)).unwrap());
    let mut archive = tar::Archive::new(gz);
    let mut entries: Vec<(String, String)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            (e.path().unwrap().display().to_string(), text)
        })
        .collect();
    entries.sort();
    std::fs::remove_dir_all(&layout).unwrap();
    entries
}

/// One build with all three options: the RUN sees them, its layer holds
/// only what it wrote, and they are in the step's cache key.
#[test]
fn add_host_shm_size_and_ulimit_reach_run_and_its_key_only() {
    let env = Env::new();
    env.import_busybox("arm64", BUSYBOX);
    // Writing to /etc/hosts goes to the step's private copy, not the layer.
    env.write(
        "Dockerfile",
        &format!(
            "FROM {BUSYBOX}\n\
             RUN {{ grep -E '(db|gw|v6)$' /etc/hosts; df -k /dev/shm | tail -n 1 | awk '{{print $2}}'; \
             ulimit -Sn; ulimit -Hn; ulimit -Sc; }} > /out && echo '1.1.1.1 mine' >> /etc/hosts\n"
        ),
    );
    let options = [
        "--add-host",
        "db:10.1.2.3",
        "--add-host",
        "gw=host-gateway",
        "--add-host",
        "v6:fe80::1",
        "--shm-size",
        "128m",
        "--ulimit",
        "nofile=512:1024",
        "--ulimit",
        "core=-1",
    ];
    let first = build(&env, &env.ctx(), &[&options[..], &["-t", "test/opts:1"]].concat());
    assert!(first.status.success(), "{}", stderr(&first));
    let layer = top_layer(&env, "test/opts:1");
    assert_eq!(
        layer,
        [("out".to_string(), "10.1.2.3\tdb\n10.0.2.2\tgw\nfe80::1\tv6\n131072\n512\n1024\nunlimited\n".to_string())],
        "the RUN saw the options and its layer holds only /out"
    );

    // The same options: the step comes from the cache.
    let again = build(&env, &env.ctx(), &[&options[..], &["-t", "test/opts:2"]].concat());
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("CACHED"), "{}", stderr(&again));
    // Without them (docker's defaults): a different key, so the RUN runs.
    let plain = build(&env, &env.ctx(), &["-t", "test/opts:3"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(!stderr(&plain).contains("CACHED"), "{}", stderr(&plain));
    let (_, out) = &top_layer(&env, "test/opts:3")[0];
    let defaults: Vec<&str> = out.lines().collect();
    assert_eq!(defaults[0], "65536", "docker's 64m /dev/shm: {out}");

    // A limit the guest kernel refuses fails the step, saying why.
    let out = build(&env, &env.ctx(), &["--ulimit", "nofile=2000000"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--ulimit nofile: the hard limit may be at most"), "{}", stderr(&out));

    // Bad values fail before any VM, naming the flag.
    for (flag, value, says) in [
        ("--add-host", "db", "--add-host \"db\""),
        ("--add-host", "db:not-an-ip", "not an IP address"),
        ("--shm-size", "big", "--shm-size \"big\""),
        ("--ulimit", "nofile=2:1", "soft limit is above the hard limit"),
        ("--ulimit", "files=1", "unknown resource \"files\""),
    ] {
        let out = build(&env, &env.ctx(), &[flag, value]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{flag} {value}: {}", stderr(&out));
    }
    env.assert_tmp_empty();
}

/// Two builds at once whose RUNs use one `sharing=locked` cache mount run
/// one after the other, the second seeing the first's writes; a new cache
/// mount's directory gets its `uid`, `gid` and `mode`.
#[test]
fn cache_mounts_lock_across_builds_and_own_their_directory() {
    let env = Env::new();
    env.import_busybox("arm64", BUSYBOX);
    let run = "RUN --mount=type=cache,id=log,target=/c,sharing=locked";
    let builds: Vec<_> = ["a", "b"]
        .iter()
        .map(|who| {
            let ctx = env.path(&format!("ctx-{who}"));
            std::fs::create_dir(&ctx).unwrap();
            let dockerfile = format!("FROM {BUSYBOX}\n{run} echo start-{who} >> /c/log && sleep 6 && echo end-{who} >> /c/log\n");
            std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
            let mut cmd = env.kiln();
            cmd.args(["build", "--progress", "plain", "--platform", "linux/arm64"]).arg(&ctx);
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let mut waited = 0;
    for child in builds {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        waited += stderr(&out).contains("waiting for the cache mount /c: another build uses it") as usize;
    }
    assert_eq!(waited, 1, "the RUNs overlapped, and one waited for the other (and said so)");
    env.write(
        "Dockerfile",
        &format!(
            "FROM {BUSYBOX}\n{run} --mount=type=cache,id=owned,target=/o,uid=1234,gid=5678,mode=0750 \
             cp /c/log /log && stat -c '%u %g %a' /o > /owned\n"
        ),
    );
    let out = build(&env, &env.ctx(), &["-t", "test/cache:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = top_layer(&env, "test/cache:1");
    let file = |name: &str| layer.iter().find(|(path, _)| path == name).map(|(_, text)| text.clone()).unwrap();
    let log = file("log");
    assert!(
        log == "start-a\nend-a\nstart-b\nend-b\n" || log == "start-b\nend-b\nstart-a\nend-a\n",
        "the RUNs ran one at a time, each on the volume the other left: {log:?}"
    );
    assert_eq!(file("owned"), "1234 5678 750\n");
    env.assert_tmp_empty();
}

/// `--ssh default` and `RUN --mount=type=ssh`: the host's ssh-agent (a
/// test agent holding one key) answers `ssh-add -l` in the RUN, through
/// SSH_AUTH_SOCK at BuildKit's default socket; nothing of it is in the layer.
/// The RUN is the host's own ssh-add (x86-64 with its libraries, bound from
/// the context), so the image is the amd64 busybox.
#[test]
fn ssh_mount_forwards_the_hosts_agent_to_one_run() {
    let (agent_bin, add_bin) = (support::require("ssh-agent", "openssh-client"), support::require("ssh-add", "openssh-client"));
    let keygen = support::require("ssh-keygen", "openssh-client");
    let env = Env::new();
    env.import_busybox("amd64", "kiln.local/busybox:amd64");
    let key = env.path("id_ed25519");
    support::run(std::process::Command::new(keygen).args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test-key", "-f"]).arg(&key));
    let sock = env.path("agent.sock");
    let mut agent = std::process::Command::new(agent_bin).arg("-D").arg("-a").arg(&sock).stdout(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    support::run(std::process::Command::new(&add_bin).env("SSH_AUTH_SOCK", &sock).arg(&key));

    // ssh-add and the libraries ldd names, loaded by their own loader.
    let x = env.ctx().join("x");
    std::fs::create_dir(&x).unwrap();
    let ldd = support::run(std::process::Command::new("ldd").arg(&add_bin));
    let libs = ldd.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(std::path::PathBuf::from));
    for file in libs.chain([add_bin.clone()]) {
        std::fs::copy(&file, x.join(file.file_name().unwrap())).unwrap();
    }
    env.write(
        "Dockerfile",
        "FROM kiln.local/busybox:amd64\n\
         RUN --mount=type=bind,source=x,target=/x --mount=type=ssh \
         /x/ld-linux-x86-64.so.2 --library-path /x /x/ssh-add -l > /keys && echo \"sock=$SSH_AUTH_SOCK\" >> /keys\n",
    );
    let mut cmd = env.kiln();
    cmd.env("SSH_AUTH_SOCK", &sock).args(["build", "--progress", "plain", "--platform", "linux/amd64", "--ssh", "default", "-t", "test/ssh:1"]);
    let out = cmd.arg(env.ctx()).output().unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let layer = top_layer(&env, "test/ssh:1");
    assert_eq!(layer.len(), 1, "only /keys: {layer:?}");
    let keys = &layer[0].1;
    assert!(keys.contains("kiln-test-key (ED25519)"), "{keys}");
    assert!(keys.ends_with("sock=/run/buildkit/ssh_agent.0\n"), "{keys}");
    env.assert_tmp_empty();
}
