//! The guest agents embedded in this kiln binary at build time (see build.rs
//! and scripts/build-agents.sh).

include!(concat!(env!("OUT_DIR"), "/agents.rs"));

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("this kiln binary carries no guest agent for {0}: run scripts/build-agents.sh {0} and rebuild kiln, or point KILN_AGENT_{upper} at an agent binary", upper = .0.to_uppercase())]
    Missing(String),
    #[error("reading the agent {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// The agent binary for an architecture key (`arm64`, `amd64`).
/// `KILN_AGENT_<ARCH>` overrides the embedded one (for agent development).
pub fn agent_binary(key: &str) -> Result<std::borrow::Cow<'static, [u8]>, AgentError> {
    if let Some(path) = std::env::var_os(format!("KILN_AGENT_{}", key.to_uppercase())) {
        return std::fs::read(&path)
            .map(std::borrow::Cow::Owned)
            .map_err(|source| AgentError::Read { path: path.to_string_lossy().into_owned(), source });
    }
    EMBEDDED_AGENTS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, bytes)| std::borrow::Cow::Borrowed(*bytes))
        .ok_or_else(|| AgentError::Missing(key.to_string()))
}
