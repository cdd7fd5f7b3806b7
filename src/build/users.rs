//! `USER` and `--chown` names resolved through a stage's /etc/passwd and /etc/group.
//! (Interface fixed; implementation owned by the `layers` branch.)

/// A resolved user: what a RUN step runs as, what COPY --chown writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group) for RUN; empty for --chown.
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

/// Resolves `user[:group]` (names or numbers) like Docker: a numeric user
/// missing from passwd is fine (gid 0 unless given), a missing name is an error.
/// `passwd`/`group` are the files' contents, `None` when absent.
pub fn resolve(_spec: &str, _passwd: Option<&str>, _group: Option<&str>) -> Result<Identity, UserError> {
    unimplemented!("layers branch")
}
