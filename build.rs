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
    for arch in ["arm64", "amd64", "armv7"] {
        let path = dir.join(format!("kiln-agent-{arch}"));
        if path.is_file() {
            writeln!(code, "    ({arch:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
        }
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("agents.rs");
    std::fs::write(out, code).unwrap();
}
