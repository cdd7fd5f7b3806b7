//! Embeds the guest agents built by scripts/build-agents.sh
//! (target/agents/kiln-agent-<arch>, or $KILN_AGENTS_DIR) into the kiln binary.

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
}

/// `KILN_EROFS_FORMAT`: a hash of the EROFS writer's sources, so cached
/// layer images are made again whenever the code that made them changes.
fn erofs_format(manifest: &std::path::Path) {
    let dir = manifest.join("src/engine/erofs");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests.rs"))
        .collect();
    files.sort();
    // FNV-1a: stable across Rust releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for byte in name.bytes().chain([0]).chain(std::fs::read(&file).unwrap()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=KILN_EROFS_FORMAT={hash:016x}");
}
