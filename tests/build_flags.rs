#![cfg(unix)]
//! buildx flags that shape the image's metadata and the cache, without a VM:
//! `--annotation` (read back with skopeo from an OCI archive),
//! `--no-cache-filter`, and the attestation flags kiln accepts only when
//! they turn attestations off.

mod support;

use std::process::{Command, Output};

use support::build_env::Env;
use support::{require, run};

fn build(env: &Env, args: &[&str]) -> Output {
    env.kiln().args(["build", "--progress", "plain"]).args(args).arg(env.ctx()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn two_stages(env: &Env) {
    env.write("Dockerfile", "FROM scratch AS base\nCOPY a /a\nFROM base AS final\nCOPY b /b\n");
    env.write("a", "a\n");
    env.write("b", "b\n");
}

#[test]
fn annotations_land_in_the_manifest_the_index_and_the_descriptors() {
    let skopeo = require("skopeo", "skopeo");
    let env = Env::new();
    two_stages(&env);
    let archive = env.path("multi.tar");
    let out = build(&env, &[
        "--platform",
        "linux/amd64,linux/arm64",
        "--annotation",
        "org.opencontainers.image.source=https://example.com/app",
        "--annotation",
        "manifest[linux/arm64]:only.arm=yes",
        "--annotation",
        "index,manifest-descriptor:org.opencontainers.image.vendor=kiln",
        "-o",
        &format!("type=oci,dest={}", archive.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let raw = run(Command::new(&skopeo).args(["inspect", "--raw"]).arg(format!("oci-archive:{}", archive.display())));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(index["annotations"]["org.opencontainers.image.vendor"], "kiln", "{raw}");
    for child in index["manifests"].as_array().unwrap() {
        assert_eq!(child["annotations"]["org.opencontainers.image.vendor"], "kiln", "{raw}");
        let arch = child["platform"]["architecture"].as_str().unwrap().to_string();
        // skopeo --raw shows the index; the child manifest is read from the archive by its digest.
        let digest = child["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let listing = run(Command::new("tar").arg("-xOf").arg(&archive).arg(format!("blobs/sha256/{digest}")));
        let m: serde_json::Value = serde_json::from_str(&listing).unwrap();
        assert_eq!(m["annotations"]["org.opencontainers.image.source"], "https://example.com/app", "{listing}");
        assert_eq!(m["annotations"].get("only.arm").is_some(), arch == "arm64", "{arch}: {listing}");
    }

    // Index annotations need an index; a bad type is named.
    let out = build(&env, &["--annotation", "index:k=v", "-o", &format!("type=oci,dest={}", env.path("one.tar").display())]);
    assert!(!out.status.success() && stderr(&out).contains("need an index"), "{}", stderr(&out));
    let out = build(&env, &["--annotation", "blob:k=v"]);
    assert!(!out.status.success() && stderr(&out).contains("unknown type \"blob\""), "{}", stderr(&out));
}

#[test]
fn no_cache_filter_rebuilds_only_the_named_stage() {
    let env = Env::new();
    two_stages(&env);
    let first = build(&env, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let again = build(&env, &["--no-cache-filter", "base"]);
    let log = stderr(&again);
    assert!(again.status.success(), "{log}");
    let status_of = |step: &str| {
        let id = log.lines().find(|l| l.contains(step)).and_then(|l| l.split_whitespace().next()).unwrap().to_string();
        log.lines().rev().find(|l| l.starts_with(&format!("{id} "))).unwrap().to_string()
    };
    assert!(!status_of("[base 2/2] COPY a /a").contains("CACHED"), "{log}");
    assert!(status_of("[final 2/2] COPY b /b").contains("CACHED"), "{log}");
    // A stage the Dockerfile does not have is a warning, as a typo should be.
    let typo = build(&env, &["--no-cache-filter", "bsae"]);
    assert!(typo.status.success() && stderr(&typo).contains("no stage of that name"), "{}", stderr(&typo));
}

#[test]
fn attestations_may_only_be_turned_off() {
    let env = Env::new();
    two_stages(&env);
    for off in [["--provenance=false"].as_slice(), &["--sbom=false"], &["--attest", "type=provenance,disabled=true"]] {
        let out = build(&env, off);
        assert!(out.status.success(), "{off:?}: {}", stderr(&out));
    }
    for on in [["--provenance=mode=max"].as_slice(), &["--sbom=true"], &["--attest", "type=sbom"]] {
        let out = build(&env, on);
        assert!(!out.status.success(), "{on:?} must not pass without an attestation");
        assert!(stderr(&out).contains("kiln does not write attestations yet"), "{}", stderr(&out));
    }
}

#[test]
fn cacheonly_exports_the_cache_and_nothing_else() {
    let env = Env::new();
    two_stages(&env);
    let cache = env.path("cache-out");
    let out = build(&env, &["-o", "type=cacheonly", "--cache-to", &format!("type=local,dest={},mode=max", cache.display())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cache.join("index.json").is_file(), "the cache was not exported");
    let images = String::from_utf8(env.ok(&["images", "-q"]).stdout).unwrap();
    assert!(images.trim().is_empty(), "cacheonly must tag nothing: {images}");
}
