#![cfg(unix)]
//! Build inputs besides the local context directory, without a VM (COPY and
//! FROM only): `--build-context` (directories, images, OCI layouts).

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
