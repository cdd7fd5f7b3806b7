#![cfg(unix)]
//! All eight platforms buildx users name, in one build: one VM per
//! platform, one index pushed to a real `docker-registry` on 127.0.0.1
//! (skopeo reads its eight entries), and each variant pulled into an empty
//! store and run. The per-platform build checks (umoci, skopeo) are in
//! tests/build.rs.

mod support;

use std::process::Command;

use support::build_env::{fixture, Env};
use support::{RegistryServer, RegistrySetup};

/// (platform, busybox fixture, `uname -m` in its guest)
const PLATFORMS: [(&str, &str, &str); 8] = [
    ("linux/amd64", "amd64", "x86_64"),
    ("linux/arm64", "arm64", "aarch64"),
    ("linux/arm/v7", "armv7", "armv7l"),
    ("linux/arm/v6", "armv6", "armv7l"),
    ("linux/386", "386", "i686"),
    ("linux/ppc64le", "ppc64le", "ppc64le"),
    ("linux/s390x", "s390x", "s390x"),
    ("linux/riscv64", "riscv64", "riscv64"),
];

#[test]
fn one_build_pushes_all_eight_platforms_and_each_variant_runs() {
    let registry = RegistryServer::start(RegistrySetup::default());
    let reg = registry.addr.clone();
    let env = Env::with_private_cache();
    for (platform, name, _) in PLATFORMS {
        let tar = fixture(&format!("busybox-{name}.tar"), &format!("run scripts/make-busybox-rootfs.sh {name}"));
        // Named as the automatic build args spell the platform.
        let base = format!("kiln.local/busybox:{name}");
        env.ok(&["import", "--platform", platform, tar.to_str().unwrap(), &base]);
    }
    env.write(
        "Dockerfile",
        "ARG TARGETARCH\nARG TARGETVARIANT\nFROM kiln.local/busybox:${TARGETARCH}${TARGETVARIANT}\nRUN uname -m > /machine\n",
    );
    let all: Vec<&str> = PLATFORMS.iter().map(|p| p.0).collect();
    let image = format!("{reg}/all:1");
    let out = env.ok(&["build", "--progress", "plain", "--platform", &all.join(","), "-t", &image, "--push", env.ctx().to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();

    let raw = support::run(Command::new(support::require("skopeo", "skopeo")).args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{image}")]));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut listed: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let variant = p["variant"].as_str().map(|v| format!("/{v}")).unwrap_or_default();
            format!("{}/{}{variant}", p["os"].as_str().unwrap(), p["architecture"].as_str().unwrap())
        })
        .collect();
    listed.sort();
    let mut want: Vec<String> = all.iter().map(|p| p.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "{log}");

    // An empty store pulls each variant and runs it in its own guest.
    let user = Env::with_private_cache();
    for (platform, _, machine) in PLATFORMS {
        let out = user.ok(&["run", "--rm", "--platform", platform, &image, "cat", "/machine"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{machine}\n"), "{platform}");
    }
    env.assert_tmp_empty();
}
