#![cfg(unix)]
//! Scaling out across CI runners, as buildx users do it: one runner per
//! platform, each with an empty store, pushing by digest and sharing the
//! build cache through a real `docker-registry` on 127.0.0.1; a merge step
//! that makes one multi-platform name with `imagetools create`; and a later
//! runner that builds from the registry cache alone, without a VM.

mod support;

use std::process::{Command, Output};

use support::build_env::Env;
use support::{RegistryServer, RegistrySetup};

const DOCKERFILE: &str = "\
ARG BASE
FROM ${BASE} AS tool
RUN echo tool-$(uname -m) > /tool
FROM ${BASE}
COPY --from=tool /tool /tool
COPY greeting /greeting
RUN cat /tool /greeting > /both
";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pushed_digest(env: &Env, file: &str) -> String {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(env.path(file)).unwrap()).unwrap();
    meta["containerimage.digest"].as_str().expect("the metadata names the digest").to_string()
}

/// A runner: its own store and cache, the same context, building one platform.
fn runner(reg: &str, arch: &str, extra: &[&str]) -> (Env, Output) {
    let env = Env::with_private_cache();
    env.write("Dockerfile", DOCKERFILE);
    env.write("greeting", "hello\n");
    let base = format!("BASE={reg}/busybox:{arch}");
    let output = format!("type=image,name={reg}/app,push-by-digest=true,push=true");
    let meta = env.path("meta.json");
    let ctx = env.ctx();
    let mut args = vec![
        "build",
        "--progress=plain",
        "--platform",
        if arch == "arm64" { "linux/arm64" } else { "linux/amd64" },
        "--build-arg",
        &base,
        "--build-arg",
        "SOURCE_DATE_EPOCH=1700000000",
        "-o",
        &output,
        "--metadata-file",
        meta.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    let out = env.ok(&args);
    (env, out)
}

#[test]
fn runners_share_a_registry_cache_and_merge_their_images_by_digest() {
    let registry = RegistryServer::start(RegistrySetup::default());
    let reg = registry.addr.clone();
    // The base images, in the registry as a CI runner finds them.
    let seed = Env::with_private_cache();
    for arch in ["arm64", "amd64"] {
        let name = format!("{reg}/busybox:{arch}");
        seed.import_busybox(arch, &name);
        seed.ok(&["push", &name]);
    }

    // Runner A: linux/arm64, exporting every stage's cache to the registry and to a directory.
    let cache_ref = format!("type=registry,ref={reg}/cache:arm64,mode=max");
    let local_dir = seed.path("local-cache");
    let local_cache = format!("type=local,dest={},mode=max", local_dir.display());
    let (a, built_a) = runner(&reg, "arm64", &["--cache-to", &cache_ref, "--cache-to", &local_cache]);
    let digest_a = pushed_digest(&a, "meta.json");
    assert!(stderr(&built_a).contains(&format!("pushed {reg}/app@{digest_a}")), "{}", stderr(&built_a));
    assert!(!a.tags().contains("app"), "push-by-digest names nothing locally:\n{}", a.tags());
    // The cache shares the image's layers: only its record list is uploaded; the layers are mounted.
    assert!(stderr(&built_a).contains("1 blobs uploaded, 3 mounted, 0 already there"), "{}", stderr(&built_a));
    // Runner B: linux/amd64.
    let (b, _) = runner(&reg, "amd64", &[]);
    let digest_b = pushed_digest(&b, "meta.json");

    // The merge, from a third, empty store, into the repository under a tag.
    let merge = Env::with_private_cache();
    let merged = merge.ok(&["imagetools", "create", "-t", &format!("{reg}/app:1.0"), &format!("{reg}/app@{digest_a}"), &format!("{reg}/app@{digest_b}")]);
    assert!(String::from_utf8_lossy(&merged.stdout).starts_with(&format!("{reg}/app:1.0@sha256:")));
    let raw = support::run(Command::new(support::require("skopeo", "skopeo")).args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{reg}/app:1.0")]));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let entries: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["platform"]["architecture"].as_str().unwrap().to_string(), m["digest"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(entries, vec![("arm64".to_string(), digest_a.clone()), ("amd64".to_string(), digest_b.clone())], "{raw}");
    // Each variant runs, pulled by `kiln run` from the merged name.
    for (platform, machine) in [("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")] {
        let out = merge.ok(&["run", "--rm", "--platform", platform, &format!("{reg}/app:1.0"), "cat", "/both"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("tool-{machine}\nhello\n"));
    }

    // A later arm64 runner with an empty store builds from the registry
    // cache alone (mode=max covered the `tool` stage), to the same image; a
    // cache reference that does not exist is only a warning.
    let missing = format!("{reg}/cache:none");
    let cache_from = format!("type=registry,ref={reg}/cache:arm64");
    let (later, rebuilt) = runner(&reg, "arm64", &["--cache-from", &missing, "--cache-from", &cache_from]);
    let log = stderr(&rebuilt);
    assert!(log.contains(&format!("warning: --cache-from {missing}")), "{log}");
    assert!(log.contains("4 steps, 4 cached, no VM booted"), "{log}");
    assert_eq!(pushed_digest(&later, "meta.json"), digest_a, "the cached build is the same image");

    // The directory cache: a layer damaged there is refused (with a
    // warning) and its step runs again; the steps before it are still cached.
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(local_dir.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(local_dir.join("blobs/sha256").join(manifest_digest)).unwrap()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let records: serde_json::Value = serde_json::from_slice(&std::fs::read(local_dir.join("blobs/sha256").join(config)).unwrap()).unwrap();
    assert_eq!(records["records"].as_array().unwrap().len(), 4, "mode=max holds the tool stage's RUN too: {records}");
    // The tool stage's RUN and the COPY of its one file make the same layer, stored once.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{manifest}");
    let last = layers.last().unwrap()["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let damaged = local_dir.join("blobs/sha256").join(last);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let from_dir = format!("type=local,src={}", local_dir.display());
    let (dir_runner, from_local) = runner(&reg, "arm64", &["--cache-from", &from_dir]);
    let log = stderr(&from_local);
    assert!(log.contains("warning: --cache-from:") && log.contains("running the step"), "{log}");
    assert!(log.contains("4 steps, 3 cached"), "{log}");
    assert_eq!(pushed_digest(&dir_runner, "meta.json"), digest_a, "the step that ran again made the same layer");
    for env in [&a, &b, &merge, &later, &dir_runner] {
        env.assert_tmp_empty();
    }
}

#[test]
fn inline_cache_records_travel_in_the_image_and_stop_there() {
    let registry = RegistryServer::start(RegistrySetup::default());
    let reg = registry.addr.clone();
    let base = format!("{reg}/busybox:arm64");
    let image = format!("{reg}/app:inline");
    let first = Env::with_private_cache();
    first.import_busybox("arm64", &base);
    first.ok(&["push", &base]);
    first.write("Dockerfile", &format!("FROM {base}\nRUN echo built > /built\n"));
    let ctx = first.ctx();
    let built = first.ok(&["build", "--platform", "linux/arm64", "--cache-to", "type=inline", "--push", "-t", &image, ctx.to_str().unwrap()]);
    assert!(stderr(&built).contains("exported the build cache to the image config (1 records"), "{}", stderr(&built));

    // A fresh store finds the RUN's record in the pushed image's config.
    let second = Env::with_private_cache();
    second.write("Dockerfile", &format!("FROM {base}\nRUN echo built > /built\n"));
    let ctx = second.ctx();
    let rebuilt = second.ok(&["build", "--progress=plain", "--platform", "linux/arm64", "--cache-from", &image, "-t", "again", ctx.to_str().unwrap()]);
    assert!(stderr(&rebuilt).contains("1 steps, 1 cached, no VM booted"), "{}", stderr(&rebuilt));
    // Neither that image nor one built on top of the inline-cached image carries the records on.
    second.write("Dockerfile", &format!("FROM {image}\nENV CHILD=1\n"));
    second.ok(&["build", "--platform", "linux/arm64", "-t", "child", ctx.to_str().unwrap()]);
    for name in ["again", "child"] {
        let inspect = String::from_utf8_lossy(&second.ok(&["inspect", name]).stdout).into_owned();
        assert!(!inspect.contains("kiln.build-cache"), "{name}: {inspect}");
    }
    let inspect = String::from_utf8_lossy(&first.ok(&["inspect", &image]).stdout).into_owned();
    assert!(inspect.contains("kiln.build-cache.v1"), "the inline image carries its records: {inspect}");
}
