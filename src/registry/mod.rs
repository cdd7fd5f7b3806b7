//! The OCI distribution (registry) client.
//!
//! - [`reference`]: image names and Docker Hub normalisation.
//! - [`auth`]: Docker config credentials, credential helpers, challenges.
//! - [`client`]: transport (plain HTTP for loopback/insecure hosts),
//!   authentication (Basic, Bearer tokens, refresh tokens), retries.
//! - [`connection`]: per-host TLS (certs.d CAs and client certificates,
//!   skipped verification) and the proxy environment.
//! - [`pull`] and [`push`]: moving images between a registry and the store.
//! - [`transfer`]: byte progress of blob transfers, for whoever shows it.
//! - [`combine`]: one multi-platform index over images already in registries.

pub mod auth;
pub mod client;
pub mod combine;
pub mod connection;
pub mod pull;
pub mod push;
pub mod reference;
pub mod transfer;

pub use auth::{Credentials, DockerConfig};
pub use client::{Client, ClientOptions};
pub use pull::{PullOptions, PullReport};
pub use push::{PushOptions, PushReport};
pub use reference::Reference;
pub use transfer::{NoObserver, TransferObserver};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Store(#[from] crate::oci::StoreError),
    #[error(transparent)]
    Model(#[from] crate::oci::model::ModelError),
    #[error("registry client setup: {0}")]
    Setup(String),
    #[error("cannot reach registry {registry}: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error("{what}: {source}")]
    Transport { what: String, source: reqwest::Error },
    #[error("{registry} requires plain HTTP, which kiln only uses for localhost, 127.0.0.0/8 and registries listed with --insecure-registry")]
    InsecureNotAllowed { registry: String },
    #[error("authentication to {registry} failed{}: {detail}", repository.as_deref().map(|r| format!(" for {r}")).unwrap_or_default())]
    Unauthorized { registry: String, repository: Option<String>, detail: String },
    #[error("{what}: not found{}", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    NotFound { what: String, message: String },
    #[error("{what}: registry answered {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status { what: String, status: reqwest::StatusCode, message: String },
    #[error("{what}: content does not match digest {expected}: got {actual} ({actual_size} bytes, expected {expected_size})")]
    DigestMismatch { what: String, expected: String, actual: String, actual_size: u64, expected_size: u64 },
    #[error("{what}: the registry sent more than the {limit} bytes expected")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: {detail}")]
    Protocol { what: String, detail: String },
}
