//! Embeds the guest agents built by scripts/build-agents.sh
//! (target/agents/kiln-agent-<arch>, or $KILN_AGENTS_DIR) into the kiln binary,
//! and the git commit it is built from (for `kiln version`).

use std::env;
use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = env::var_os("KILN_AGENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target").join("agents"));
    println!("cargo:rerun-if-env-changed=KILN_AGENTS_DIR");
    // A directory's mtime changes when scripts/build-agents.sh renames a new agent in.
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut code = String::from("/// (architecture key, agent binary)\npub static EMBEDDED_AGENTS: &[(&str, &[u8])] = &[\n");
    for arch in ["arm64", "amd64", "armv7", "riscv64", "ppc64le", "s390x"] {
        let path = dir.join(format!("kiln-agent-{arch}"));
        if path.is_file() {
            writeln!(code, "    ({arch:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
        }
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("agents.rs");
    std::fs::write(out, code).unwrap();
    erofs_format(&manifest);
    layer_index_format(&manifest);
    git_commit(&manifest);
}

/// `KILN_GIT_COMMIT`: the commit kiln is built from (`KILN_GIT_COMMIT` in
/// the build's environment wins, for builds outside a checkout); empty when
/// unknown.
fn git_commit(manifest: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=KILN_GIT_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(manifest)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = env::var("KILN_GIT_COMMIT").ok().or_else(|| {
        let head = git(&["rev-parse", "HEAD"])?;
        // Read again when HEAD moves (a commit, a checkout); only files that
        // exist, as a missing one would run this script on every build.
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        for path in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
            let file = git(&["rev-parse", "--git-path", path]).map(|p| manifest.join(p));
            if let Some(file) = file.filter(|f| f.exists()) {
                println!("cargo:rerun-if-changed={}", file.display());
            }
        }
        Some(head)
    });
    let commit = commit.unwrap_or_default();
    println!("cargo:rustc-env=KILN_GIT_COMMIT={commit}");
    let version = env::var("CARGO_PKG_VERSION").unwrap();
    let line = match commit.get(..12) {
        Some(short) => format!("{version} (commit {short})"),
        None => version,
    };
    println!("cargo:rustc-env=KILN_VERSION_LINE={line}");
}

/// `KILN_EROFS_FORMAT`: a hash of the EROFS writer's sources, so cached
/// layer images are made again whenever the code that made them changes.
fn erofs_format(manifest: &std::path::Path) {
    let dir = manifest.join("src/engine/erofs");
    println!("cargo:rerun-if-changed={}", dir.display());
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests.rs"))
        .collect();
    println!("cargo:rustc-env=KILN_EROFS_FORMAT={}", sources_hash(files));
}

/// `KILN_LAYER_INDEX_FORMAT`: a hash of the sources that index a layer
/// (engine::rootfs and the tar reader and entry types it uses), so stored
/// layer indexes are made again whenever that code changes.
fn layer_index_format(manifest: &std::path::Path) {
    let files = ["src/engine/rootfs.rs", "guest-agent/src/tar_read.rs", "guest-agent/src/layer_entry.rs", "guest-agent/src/file_name.rs"]
        .map(|f| manifest.join(f));
    println!("cargo:rustc-env=KILN_LAYER_INDEX_FORMAT={}", sources_hash(files.to_vec()));
}

/// FNV-1a over the files' names and contents, in name order: stable across
/// Rust releases, unlike std's hasher.
fn sources_hash(mut files: Vec<PathBuf>) -> String {
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for byte in name.bytes().chain([0]).chain(std::fs::read(&file).unwrap()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}
