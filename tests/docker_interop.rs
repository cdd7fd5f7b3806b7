#![cfg(unix)]
//! Handing images to Docker as buildx does: `-o type=docker` and `--load`
//! through the `docker` CLI (a stand-in script here: no engine runs in CI),
//! archives streamed to stdout, and `oci-mediatypes=false` pushes that a
//! registry and skopeo read as a Docker manifest list. No VM: the builds
//! are `FROM scratch` plus COPY.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::build_env::Env;
use support::{require, run, RegistryServer, RegistrySetup};

/// A `docker` that answers `docker load` as an engine would (keeping the
/// archive it was given in `loaded.tar`), or fails as docker does without one.
fn fake_docker(dir: &Path, engine_running: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let body = if engine_running {
        format!("[ \"$1\" = load ] || exit 2\ncat > {}/loaded.tar\necho 'Loaded image: app:1'\n", dir.display())
    } else {
        "cat > /dev/null\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2\nexit 1\n".to_string()
    };
    let path = dir.join("docker");
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn build(env: &Env, path: &Path, args: &[&str]) -> Output {
    env.kiln().env("PATH", path).args(["build", "--progress", "plain"]).args(args).arg(env.ctx()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch_context(env: &Env) {
    env.write("Dockerfile", "FROM scratch\nCOPY hello.txt /hello.txt\n");
    env.write("hello.txt", "hello docker\n");
}

#[test]
fn type_docker_and_load_go_through_the_docker_cli_like_buildx() {
    let skopeo = require("skopeo", "skopeo");
    let env = Env::new();
    scratch_context(&env);
    let bin = env.path("bin");
    let system = std::env::var("PATH").unwrap();

    // An engine: the archive docker load gets is a Docker archive of the image, under its tag.
    fake_docker(&bin, true);
    let path = format!("{}:{system}", bin.display());
    let out = build(&env, Path::new(&path), &["-t", "app:1", "-o", "type=docker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("loaded into Docker: Loaded image: app:1"), "{}", stderr(&out));
    let loaded = bin.join("loaded.tar");
    let inspect = run(Command::new(&skopeo).arg("inspect").arg(format!("docker-archive:{}", loaded.display())));
    assert!(inspect.contains("\"RepoTags\""), "{inspect}");
    let listing = run(Command::new("tar").arg("-tf").arg(&loaded));
    assert!(listing.lines().any(|l| l == "manifest.json"), "{listing}");
    std::fs::remove_file(&loaded).unwrap();

    // --load does the same, beside kiln's own store.
    let out = build(&env, Path::new(&path), &["-t", "app:2", "--load"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(loaded.exists(), "--load must hand the image to docker load");
    assert!(env.tags().contains("app"), "{}", env.tags());

    // No engine: type=docker fails with docker's own reason, --load notes it and keeps the image.
    fake_docker(&bin, false);
    let out = build(&env, Path::new(&path), &["-t", "app:3", "-o", "type=docker"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Cannot connect to the Docker daemon"), "{}", stderr(&out));
    let tagged = env.kiln().args(["inspect", "app:3"]).output().unwrap();
    assert!(!tagged.status.success(), "a build whose output failed must tag nothing");
    let out = build(&env, Path::new(&path), &["-t", "app:4", "--load"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not loaded into Docker"), "{}", stderr(&out));

    // No docker CLI at all.
    let empty = env.path("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let out = build(&env, &empty, &["-o", "type=docker"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the docker CLI was not found on PATH"), "{}", stderr(&out));
    env.assert_tmp_empty();
}

#[test]
fn oci_and_docker_archives_stream_to_stdout() {
    let skopeo = require("skopeo", "skopeo");
    let env = Env::new();
    scratch_context(&env);
    let path = std::env::var("PATH").unwrap();
    for (output, transport) in [("type=oci,dest=-", "oci-archive"), ("type=docker,dest=-", "docker-archive")] {
        let out = build(&env, Path::new(&path), &["-t", "app:1", "-o", output]);
        assert!(out.status.success(), "{}", stderr(&out));
        let file = env.path("streamed.tar");
        std::fs::write(&file, &out.stdout).unwrap();
        let config = run(Command::new(&skopeo).args(["inspect", "--config"]).arg(format!("{transport}:{}", file.display())));
        assert!(config.contains("\"diff_ids\""), "{output}: {config}");
    }
}

#[test]
fn oci_mediatypes_false_pushes_a_docker_manifest_list() {
    let skopeo = require("skopeo", "skopeo");
    let registry = RegistryServer::start(RegistrySetup::default());
    let env = Env::new();
    scratch_context(&env);
    let path = std::env::var("PATH").unwrap();
    let name = format!("{}/app:docker", registry.addr);
    let out = build(&env, Path::new(&path), &[
        "--platform",
        "linux/amd64,linux/arm64",
        "-o",
        &format!("type=image,name={name},push=true,oci-mediatypes=false"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let raw = run(Command::new(&skopeo).args(["inspect", "--tls-verify=false", "--raw"]).arg(format!("docker://{name}")));
    let list: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(list["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json", "{raw}");
    let children = list["manifests"].as_array().unwrap();
    assert_eq!(children.len(), 2, "{raw}");
    for child in children {
        assert_eq!(child["mediaType"], "application/vnd.docker.distribution.manifest.v2+json", "{raw}");
        let digest = child["digest"].as_str().unwrap();
        let manifest = run(Command::new(&skopeo).args(["inspect", "--tls-verify=false", "--raw"]).arg(format!("docker://{}/app@{digest}", registry.addr)));
        assert!(manifest.contains("application/vnd.docker.container.image.v1+json"), "{manifest}");
        assert!(manifest.contains("application/vnd.docker.image.rootfs.diff.tar.gzip"), "{manifest}");
        assert!(!manifest.contains("vnd.oci"), "{manifest}");
    }
    // skopeo can copy it whole, so every blob it names is in the registry.
    let copy = env.path("copy");
    run(Command::new(&skopeo).args(["copy", "--all", "--src-tls-verify=false"]).arg(format!("docker://{name}")).arg(format!("dir:{}", copy.display())));

    // zstd layers have no Docker type: refused with the way out, and nothing pushed.
    let out = build(&env, Path::new(&path), &["--compression", "zstd", "-o", &format!("type=registry,name={}/app:zstd,oci-mediatypes=false", registry.addr)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--compression gzip"), "{}", stderr(&out));
}
